"""Options every command shares, as data: ``(flags, click settings)``. :mod:`.options` makes
click options of them; the click-free parser of ``compsearch search http://…``
(:mod:`compsearch.search.commands.fast_argv`) reads the same entries without importing click."""
from __future__ import annotations

# Every command's --device: checked (and ``auto`` resolved) by mapping.models.resolve_device.
DEVICE = (("--device",), dict(
    default="auto", show_default=True,
    help="torch device: auto (a GPU when torch sees one, else the CPU), cpu, cuda, cuda:1 …"))
JSON = (("--json", "as_json"), dict(
    is_flag=True, help="Print one JSON object (the result's fields) instead of text; progress goes to stderr."))
