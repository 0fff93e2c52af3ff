"""Click commands of the query side (``compsearch serve``).

Each module is thin: parse, call one library function, print.
"""
