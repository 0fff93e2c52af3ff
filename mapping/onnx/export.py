"""Export an index's encoders to ONNX towers beside it (torch's TorchScript-based exporter,
which needs no package beyond onnx), each checked against the torch encoder before it is kept.
The only module of :mod:`mapping.onnx` that imports torch: it runs where the models are loaded
already, on the first query that needed them."""
from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import nn

from compsearch.mapping.chunk_store import write_atomically
from compsearch.mapping.encoder import PropertyEncoder
from compsearch.mapping.errors import reason, warn
from compsearch.mapping.identity import EncoderIdentity
from compsearch.mapping.models import LoadedModel
from compsearch.mapping.onnx.image import NAMES, PIXEL_SPEC, PIXELS, OnnxImageTower, image_identity
from compsearch.mapping.onnx.pixels import PixelSpec
from compsearch.mapping.onnx.text import CONTEXT_LENGTH, EMBEDDINGS, TOKENS, OnnxTextTower, text_identity
from compsearch.mapping.onnx.tokenizer import ClipTokenizer
from compsearch.mapping.onnx.towers import IMAGE_TOWER, TEXT_TOWER, TOLERANCE, open_session

OPSET = 17
# Texts the text tower and the tokenizer are checked on: words, punctuation, digits, accents,
# non-Latin scripts, emoji and a text longer than any context (truncated).
PROBE_TEXTS = ["a photo of a red circle.", "Striped, plain & dotted!", "café naïve “quoted” ﬁne", "東京タワー 123",
               "it's they'll I'd", "😀 👍🏽", "a " * 100, ""]
PROBE_SIZES = [(64, 48), (37, 91), (300, 200), (224, 224), (500, 333)]  # (width, height) of the probe images
_STEPS_WITHOUT_EFFECT = ("MaybeToTensor", "ToTensor", "_convert_to_rgb")  # on an RGB PIL image: no more than the spec


def save_text_tower(clip: LoadedModel, folder: Path) -> bool:
    """Write ``clip``'s text tower to ``folder``; False when not written: a tokenizer other than
    CLIP's byte-pair one (such CLIPs embed text with torch), or (with a warning) a failed export."""
    context_length = getattr(clip.tokenizer, "context_length", None)
    if not clip.is_clip or not isinstance(context_length, int):
        return False
    tokens = ClipTokenizer(context_length)(PROBE_TEXTS)
    if not np.array_equal(tokens, clip.tokenizer(PROBE_TEXTS).numpy()):
        return False  # not CLIP's tokenizer: nothing the tower could be given
    with torch.no_grad():
        expected = clip.encode_text(PROBE_TEXTS).float().cpu().numpy()
    metadata = {**text_identity(clip.name, clip.weights_id), CONTEXT_LENGTH: str(context_length)}
    return _write(folder / TEXT_TOWER, f"{clip.name}'s text tower", metadata,
                  lambda path: _export(_TextTower(clip.model), torch.from_numpy(tokens).to(clip.device), path,
                                       [TOKENS], [EMBEDDINGS], {TOKENS: {0: "batch"}, EMBEDDINGS: {0: "batch"}}),
                  lambda session: OnnxTextTower(session, context_length).encode_text(PROBE_TEXTS) - expected)


def save_image_tower(encoder: PropertyEncoder, recorded: EncoderIdentity, folder: Path) -> bool:
    """Write ``encoder`` (an index's, recorded in its manifest as ``recorded``) to ``folder`` as
    an image tower; False when not written: bf16 vectors (an fp32 tower would not make them), a
    transform other than resize, crop and normalise, or (with a warning) a failed export."""
    spec = pixel_spec(encoder.model.preprocess) if encoder.precision == "fp32" else None
    if spec is None:
        return False
    probe = probe_images()
    expected = encoder.encode_images(probe)
    example = encoder.model.preprocess(probe[0])[None]
    metadata = {**image_identity(recorded), NAMES: json.dumps(encoder.names), PIXEL_SPEC: spec.to_json()}
    return _write(folder / IMAGE_TOWER, "the index's image encoder", metadata,
                  lambda path: _export(_ImageEncoder(encoder), example, path, [PIXELS], encoder.names, None),
                  lambda session: np.concatenate([
                      vectors - expected[name] for name, vectors in
                      OnnxImageTower(session, encoder.names, spec).encode_images(probe).items()], axis=1))


def pixel_spec(preprocess: Callable[[PIL.Image.Image], torch.Tensor]) -> PixelSpec | None:
    """The transform as a :class:`PixelSpec`, if it is one (resize the shorter side, centre crop
    within it, to tensor, normalise) and the spec gives its very pixels on the probe images."""
    steps = {}
    for step in getattr(preprocess, "transforms", [None]):
        kind = getattr(step, "__name__", type(step).__name__)  # a function (open_clip's _convert_to_rgb) or a transform
        if kind in _STEPS_WITHOUT_EFFECT or (kind == "MaybeConvertMode" and step.mode == "RGB"):
            continue
        if kind not in ("Resize", "CenterCrop", "Normalize") or kind in steps:
            return None
        steps[kind] = step
    if set(steps) != {"Resize", "CenterCrop", "Normalize"}:
        return None
    resize, crop, normalize = steps["Resize"], steps["CenterCrop"], steps["Normalize"]
    size = resize.size if isinstance(resize.size, int) else resize.size[0] if len(resize.size) == 1 else None
    if size is None or resize.max_size is not None or size < max(crop.size):
        return None
    spec = PixelSpec(size, resize.interpolation.name, tuple(crop.size), tuple(float(v) for v in normalize.mean),
                     tuple(float(v) for v in normalize.std))
    if spec.interpolation not in PIL.Image.Resampling.__members__:
        return None
    same = all(np.abs(spec(image) - preprocess(image).numpy()).max() <= 1e-6 for image in probe_images())
    return spec if same else None


def probe_images() -> list[PIL.Image.Image]:
    """Seeded noise-and-gradient RGB images of several shapes (landscape, portrait, square)."""
    generator = np.random.default_rng(0)
    images = []
    for width, height in PROBE_SIZES:
        ramp = np.linspace(0, 255, width)[None, :, None] * np.linspace(0, 1, height)[:, None, None]
        noise = generator.integers(0, 64, (height, width, 3))
        images.append(PIL.Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8), "RGB"))
    return images


class _TextTower(nn.Module):
    """Token ids → the CLIP's normalised text embeddings."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens, normalize=True)


class _ImageEncoder(nn.Module):
    """Pixels → each name's normalised vector, through the index's own encoder."""

    def __init__(self, encoder: PropertyEncoder) -> None:
        super().__init__()
        self.model = encoder.model.model  # registered, so the exporter finds its weights and eval mode
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        vectors = self.encoder.encode(pixels)
        return tuple(F.normalize(vectors[name], dim=-1) for name in self.encoder.names)


def _write(path: Path, what: str, metadata: dict[str, str], export: Callable[[Path], None],
           difference: Callable[[Any], np.ndarray]) -> bool:
    """Export to a temporary file, name its source in its metadata, check it (``difference``
    from the torch encoder's outputs on the probe), then put it at ``path``."""

    def write(temporary: Path) -> None:
        import onnx

        export(temporary)
        model = onnx.load(str(temporary))
        onnx.helper.set_model_props(model, metadata)
        onnx.save(model, str(temporary))
        largest = float(np.abs(difference(open_session(temporary))).max())
        if largest > TOLERANCE:
            raise ValueError(f"the exported tower differs from torch's by {largest:.2g}")

    try:
        write_atomically(path, write)
    except Exception as error:  # noqa: BLE001 - the exporter, onnx and the file system raise their own kinds
        warn(f"could not save {what} to {path} ({reason(error)})", "these queries on this index keep loading torch")
        return False
    return True


def _export(module: nn.Module, example: torch.Tensor, path: Path, inputs: list[str], outputs: list[str],
            dynamic_axes: dict[str, dict[int, str]] | None) -> None:
    with torch.no_grad(), warnings.catch_warnings(), _without_attention_fast_path():
        warnings.simplefilter("ignore")  # the exporter's tracer and deprecation notes: nothing a user can act on
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic_axes)


@contextmanager
def _without_attention_fast_path() -> Iterator[None]:
    """nn.MultiheadAttention's fused inference kernel has no ONNX form: export the plain ops."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)
