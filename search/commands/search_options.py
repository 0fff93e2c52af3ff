"""The options of ``compsearch search``, as data: ``(flags, click settings)`` pairs (a
``choices`` entry becomes a ``click.Choice``). The click command is built from them, and the
fast path of a query to a server (:mod:`compsearch.search.launch`) parses them without click. File options stay strings here (``pathlib`` is
not imported on that path)."""
from __future__ import annotations

from compsearch.mapping.commands.flags import DEVICE, JSON
from compsearch.search.commands.fast_argv import Option
from compsearch.search.render import FORMATS

SEARCH_OPTIONS: tuple[Option, ...] = (
    (("--text",), dict(help="Words to search for (needs an index in a CLIP space).")),
    (("--image",), dict(metavar="FILE", help="A reference image file: images like it in --property.")),
    (("--id", "image_id"), dict(type=int, help="An indexed image's id (from earlier results), used like --image.")),
    (("--property", "-p", "property_name"), dict(
        metavar="NAME", help="The property index the main term searches (default: full, the whole representation).")),
    (("--weight",), dict(default=1.0, show_default=True, type=float, help="Weight of the main term.")),
    (("--and", "and_terms"), dict(multiple=True, metavar="TERM", help="Add a term (syntax below); repeatable.")),
    (("--not", "not_terms"), dict(multiple=True, metavar="TERM",
                                  help="Add a term with its weight negated; repeatable.")),
    (("-k", "k"), dict(default=20, show_default=True, type=int, help="Number of results (up to 10,000).")),
    (("--offset",), dict(default=0, show_default=True, type=int,
                         help="Skip this many results first: the next page is --offset K (the order is stable).")),
    (("--where",), dict(metavar="EXPR", help="Search only images whose columns match, e.g. "
                                             "\"taken >= '2020-01-01' and camera_model == 'X100V'\".")),
    (("--format", "output_format"), dict(
        choices=FORMATS, default=None,
        help="How results print: table (default), json (as --json), jsonl, csv, or paths (one per line).")),
    (("--copy-to",), dict(metavar="DIR", help="Also copy the result files into DIR as RANK-NAME.")),
    (("--link-to",), dict(metavar="DIR", help="Also symlink the result files into DIR as RANK-NAME.")),
    (("--threshold",), dict(type=float, help="Keep only results whose total score is at least this.")),
    (("--weights",), dict(metavar="FILE", help="The model's weights file, if not found where it was when indexing.")),
    (("--clip-weights",), dict(metavar="FILE", help="The CLIP's weights file (for --text), likewise.")),
    DEVICE,
    (("--token",), dict(envvar="COMPSEARCH_TOKEN", show_envvar=True,
                        help="With a URL: the token the server was started with.")),
    JSON,
)
