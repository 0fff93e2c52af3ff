"""The query side: opening indexes, text / reference-image queries, HTTP API, web page."""
