"""Export a loaded CLIP's text tower to ONNX (torch's TorchScript-based exporter, which needs no
extra package), checked against the CLIP itself before it is kept. The only module of
:mod:`mapping.onnx_text` that imports torch: it runs where the CLIP is loaded already."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compsearch.mapping.chunk_store import write_atomically
from compsearch.mapping.errors import reason, warn
from compsearch.mapping.models import LoadedModel
from compsearch.mapping.onnx_text.tokenizer import ClipTokenizer
from compsearch.mapping.onnx_text.tower import EMBEDDINGS, TEXT_TOWER, TOKENS, open_session, tower_metadata

OPSET = 17
TOLERANCE = 1e-4  # largest difference to the CLIP's own embeddings a kept tower may show (typically ~1e-7)
# Texts the exported tower and the tokenizer are checked on: words, punctuation, digits,
# accents, non-Latin scripts, emoji and a text longer than any context (truncated).
PROBE = ["a photo of a red circle.", "Striped, plain & dotted!", "café naïve “quoted” ﬁne", "東京タワー 123",
         "it's they'll I'd", "😀 👍🏽", "a " * 100, ""]


class _TextTower(nn.Module):
    """Token ids → the CLIP's normalised text embeddings: what is exported."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens, normalize=True)


def save_text_tower(clip: LoadedModel, folder: Path) -> bool:
    """Write ``clip``'s text tower to ``folder``/text-tower.onnx; False (and the reason as a
    warning where the user can act on it) when not written: a tokenizer other than CLIP's
    byte-pair one (such CLIPs embed text with torch), a failed export, a tower that disagrees
    with the CLIP, or a folder that cannot be written."""
    context_length = getattr(clip.tokenizer, "context_length", None)
    if not clip.is_clip or not isinstance(context_length, int):
        return False
    tokenizer = ClipTokenizer(context_length)
    if not np.array_equal(tokenizer(PROBE), clip.tokenizer(PROBE).numpy()):
        return False  # not CLIP's tokenizer: nothing the tower could be given
    path = folder / TEXT_TOWER
    try:
        write_atomically(path, lambda temporary: _export(clip, context_length, temporary))
    except Exception as error:  # noqa: BLE001 - the exporter, onnx and the file system raise their own kinds
        warn(f"could not save {clip.name}'s text tower to {path} ({reason(error)})",
             "text queries on this index keep loading torch")
        return False
    return True


def _export(clip: LoadedModel, context_length: int, path: Path) -> None:
    import onnx

    tokens = torch.from_numpy(ClipTokenizer(context_length)(PROBE)).to(clip.device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracer and deprecation notes: nothing a user can act on
        torch.onnx.export(_TextTower(clip.model).eval(), (tokens,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[TOKENS], output_names=[EMBEDDINGS],
                          dynamic_axes={TOKENS: {0: "batch"}, EMBEDDINGS: {0: "batch"}})
        expected = clip.encode_text(PROBE).float().cpu().numpy()
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, tower_metadata(clip.name, clip.weights_id, context_length))
    onnx.save(model, str(path))
    exported = open_session(path).run([EMBEDDINGS], {TOKENS: tokens.cpu().numpy()})[0]
    difference = float(np.abs(exported - expected).max())
    if difference > TOLERANCE:
        raise ValueError(f"the exported tower differs from the CLIP by {difference:.2g}")
