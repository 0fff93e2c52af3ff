"""Click commands of the model side (``compsearch decompose``, ``compsearch demo``).

Each module is thin: parse, call one library function, print.
"""
