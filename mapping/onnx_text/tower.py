"""A CLIP's text tower saved as ONNX beside an index, run with onnxruntime: texts → normalised
embeddings, as the CLIP's own ``encode_text`` gives them, without importing torch.

The file names the CLIP it was exported from inside itself (ONNX metadata: name, weights id,
context length, format), so it cannot be mistaken for another's: a tower for another CLIP, of
another format, or that cannot be read is not used (the caller embeds with torch instead and
writes a fresh one), never run on the wrong model."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from compsearch.mapping.errors import reason, warn
from compsearch.mapping.onnx_text.tokenizer import ClipTokenizer

TEXT_TOWER = "text-tower.onnx"  # in the index directory
FORMAT_KEY, FORMAT = "compsearch.text_tower", "1"  # input: int64 token ids (batch × context); output: normalised embeddings
TOKENS, EMBEDDINGS = "tokens", "embeddings"


def tower_metadata(clip_name: str, clip_weights_id: str, context_length: int) -> dict[str, str]:
    """What a tower file says about itself."""
    return {FORMAT_KEY: FORMAT, "clip_name": clip_name, "clip_weights_id": clip_weights_id,
            "context_length": str(context_length)}


def _describe(metadata: dict[str, str]) -> str:
    return (f"{metadata.get('clip_name')} (weights {metadata.get('clip_weights_id')}, "
            f"tower format {metadata.get(FORMAT_KEY)})")


class OnnxTextTower:
    """``encode_text(texts)`` through an exported text tower (see :func:`open_text_tower`)."""

    def __init__(self, session, name: str, context_length: int) -> None:
        self.session = session
        self.name = name
        self.tokenizer = ClipTokenizer(context_length)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), d)`` normalised float32 embeddings."""
        return self.session.run([EMBEDDINGS], {TOKENS: self.tokenizer(texts)})[0]


def open_session(path: Path):
    """An onnxruntime session on ``path`` (CPU; its warnings kept out of a command's output)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def open_text_tower(folder: Path, clip_name: str, clip_weights_id: str) -> OnnxTextTower | None:
    """The text tower saved in ``folder`` for this CLIP; None if there is none, or (with a
    warning) if the one there is for another CLIP or cannot be read."""
    path = folder / TEXT_TOWER
    if not path.is_file():
        return None
    try:
        session = open_session(path)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own kinds for a damaged file
        warn(f"cannot read the text tower {path} ({reason(error)})",
             "texts are embedded with torch this time, and the file is written anew")
        return None
    metadata = session.get_modelmeta().custom_metadata_map
    expected = tower_metadata(clip_name, clip_weights_id, 0)
    if any(metadata.get(key) != expected[key] for key in (FORMAT_KEY, "clip_name", "clip_weights_id")):
        warn(f"the text tower {path} is for {_describe(metadata)}, not for the index's {_describe(expected)}",
             "texts are embedded with torch this time, and the file is written anew")
        return None
    return OnnxTextTower(session, clip_name, int(metadata["context_length"]))
