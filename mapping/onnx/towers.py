"""Tower files beside an index: what they are called, how they say what they were exported
from, and how one is opened — only when it says it is the one expected.

A tower names its source in its ONNX metadata (:func:`identity`), so a file cannot be
mistaken for another's: a tower for another CLIP or encoder, of another format, or that cannot
be read is not used, with a warning (the caller answers with torch and writes it anew), never
run on the wrong model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compsearch.mapping.errors import reason, warn

TEXT_TOWER, IMAGE_TOWER = "text-tower.onnx", "image-tower.onnx"  # in the index directory
FORMAT_KEY, FORMAT = "compsearch.tower", "1"
TOLERANCE = 1e-4  # largest difference to the torch encoder a tower may show when written (typically ~1e-7)
ANEW = "this query runs with torch instead, and the file is written anew"
SHOWN = 80  # metadata values longer than this are named, not shown, in a warning


def identity(**source: str) -> dict[str, str]:
    """The metadata that names a tower's source (and the tower format)."""
    return {FORMAT_KEY: FORMAT, **source}


def open_session(path: Path) -> Any:
    """An onnxruntime session on ``path`` (CPU; its log kept out of a command's output)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def open_tower(path: Path, expected: dict[str, str]) -> tuple[Any, dict[str, str]] | None:
    """``(session, metadata)`` of the tower at ``path`` if its metadata holds ``expected``;
    None if there is no file, or (with a warning) if it is another's or unreadable."""
    if not path.is_file():
        return None
    try:
        session = open_session(path)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own kinds for a damaged file
        warn(f"cannot read {path} ({reason(error)})", ANEW)
        return None
    metadata = session.get_modelmeta().custom_metadata_map
    differing = [key for key, value in expected.items() if metadata.get(key) != value]
    if differing:
        shown = [f"{key} {metadata.get(key)!r}, not {expected[key]!r}" for key in differing
                 if len(expected[key]) <= SHOWN and len(metadata.get(key) or "") <= SHOWN]  # an encoder's is long
        warn(f"{path} was exported for another {', '.join(differing)}{': ' + '; '.join(shown) if shown else ''} "
             "(the index or its model changed since)", ANEW)
        return None
    return session, metadata
