"""Where compsearch keeps what it can rebuild (fixture models, thumbnails): one root for all."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "COMPSEARCH_CACHE"


def cache_dir(*parts: str) -> Path:
    """``${COMPSEARCH_CACHE:-~/.cache/compsearch}/<parts…>`` (not created)."""
    return Path(os.environ.get(CACHE_ENV, "~/.cache/compsearch")).expanduser().joinpath(*parts)
