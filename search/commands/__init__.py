"""Thin click commands of the query side; each parses, calls one library function, prints."""
