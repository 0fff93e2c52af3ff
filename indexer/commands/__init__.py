"""Thin click commands of the corpus side; each parses, calls one library function, prints."""
