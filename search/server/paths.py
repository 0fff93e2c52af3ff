"""What a client sees of the server's disk: paths relative to the collection root they lie
under, or only their file name — never the server's absolute paths (unless ``--show-paths``)."""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# A POSIX absolute path inside any text (``local-dir:/x/y`` too), not a URL's ``//host/…``.
ABSOLUTE_PATH = re.compile(r"(?<![\w./])/(?!/)[^\s'\"()\[\],;]*")


def shown_path(path: str | None, roots: Sequence[Path]) -> str | None:
    """``path`` relative to the collection root holding its folder; None outside every root."""
    if path is None:
        return None
    folder = os.path.realpath(os.path.dirname(path))  # the folder's real path: a symlinked file keeps its name
    for root in roots:
        if os.path.commonpath([folder, str(root)]) == str(root):
            return os.path.relpath(os.path.join(folder, os.path.basename(path)), root)
    return None


def _hidden(text: str, roots: Sequence[Path]) -> str:
    return ABSOLUTE_PATH.sub(lambda match: shown_path(match.group(0), roots) or Path(match.group(0)).name or "/", text)


def without_paths(value: Any, roots: Sequence[Path]) -> Any:
    """``value`` (JSON-like) with every absolute path in its strings made relative to its
    collection root, or cut to its file name."""
    if isinstance(value, str):
        return _hidden(value, roots)
    if isinstance(value, dict):
        return {key: without_paths(item, roots) for key, item in value.items()}
    if isinstance(value, list):
        return [without_paths(item, roots) for item in value]
    return value
