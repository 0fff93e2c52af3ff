"""``compsearch serve``: the HTTP API and web page over one index directory."""
