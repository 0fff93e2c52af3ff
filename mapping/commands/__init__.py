"""Click commands of the model side (``compsearch decompose``, ``compsearch sample``, …).

Each module is thin: parse, call one library function, print.
"""
