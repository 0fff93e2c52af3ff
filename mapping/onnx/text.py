"""A CLIP's text tower as ONNX: texts → normalised embeddings, as the CLIP's own
``encode_text`` gives them, without torch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compsearch.mapping.onnx.tokenizer import ClipTokenizer
from compsearch.mapping.onnx.towers import TEXT_TOWER, identity, open_tower

TOKENS, EMBEDDINGS = "tokens", "embeddings"  # int64 token ids (batch × context) → normalised embeddings
CONTEXT_LENGTH = "context_length"


def text_identity(clip_name: str, clip_weights_id: str) -> dict[str, str]:
    return identity(clip_name=clip_name, clip_weights_id=clip_weights_id)


class OnnxTextTower:
    """``encode_text(texts)`` through an exported text tower (see :func:`open_text_tower`)."""

    def __init__(self, session: Any, context_length: int) -> None:
        self.session = session
        self.tokenizer = ClipTokenizer(context_length)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), d)`` normalised float32 embeddings."""
        return self.session.run([EMBEDDINGS], {TOKENS: self.tokenizer(texts)})[0]


def open_text_tower(folder: Path, clip_name: str, clip_weights_id: str) -> OnnxTextTower | None:
    """The text tower saved in ``folder`` for this CLIP, or None (:func:`~.towers.open_tower`)."""
    opened = open_tower(folder / TEXT_TOWER, text_identity(clip_name, clip_weights_id))
    if opened is None:
        return None
    session, metadata = opened
    return OnnxTextTower(session, int(metadata[CONTEXT_LENGTH]))
