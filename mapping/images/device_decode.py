"""JPEGs decoded where the model runs (nvjpeg on a GPU) and preprocessed as tensors there.

On a GPU, PIL decoding in CPU workers — not the model — bounds indexing (~790 img/s
with 15 workers against ~8,000 img/s for a ViT-B/16 bf16 forward on an H100). So the loader
can hand JPEG *bytes* to the main process, which decodes a batch at once with
``torchvision.io.decode_jpeg(..., device=…)`` and applies the model's own eval transform as
tensor operations on that device. Only transforms made of steps with a tensor equivalent
(Resize, CenterCrop, ToTensor, Normalize, RGB conversion) are translated; any other transform
keeps the PIL path. A file the device decoder refuses falls back to PIL, file by file.

The two paths agree within resampling and decoder rounding: PIL resizes in 8 bits with its
own bicubic kernel, torchvision in floating point (see tests/mapping/images/test_device_decode.py
for the measured difference).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import PIL.Image
import torch

JPEG_SIGNATURE = b"\xff\xd8\xff"
TensorTransform = Callable[[torch.Tensor], torch.Tensor]  # uint8 (3, H, W) → the model's input


def is_jpeg(data: bytes) -> bool:
    return data.startswith(JPEG_SIGNATURE)


def _step(step: object) -> TensorTransform | None:
    """One transform step as a tensor operation, or None when it has no tensor equivalent."""
    from torchvision import transforms as T
    from torchvision.transforms import functional as F

    name = type(step).__name__
    if isinstance(step, T.Resize):
        return lambda x: F.resize(x, step.size, step.interpolation, step.max_size, antialias=True)
    if isinstance(step, T.CenterCrop):
        return lambda x: F.center_crop(x, list(step.size))
    if isinstance(step, T.Normalize):
        return lambda x: F.normalize(x, step.mean, step.std)
    if isinstance(step, T.ToTensor) or name == "MaybeToTensor":  # timm's: ToTensor for PIL input
        return lambda x: x.float() / 255.0
    if getattr(step, "__name__", "") == "_convert_to_rgb":  # open_clip's: decoded as RGB already
        return lambda x: x
    return None


def tensor_transform(transform: Callable[[PIL.Image.Image], torch.Tensor]) -> TensorTransform | None:
    """``transform`` (a torchvision Compose of PIL steps) as tensor operations, or None."""
    steps = getattr(transform, "transforms", [transform])
    translated = [_step(step) for step in steps]
    if not translated or any(step is None for step in translated):
        return None

    def apply(image: torch.Tensor) -> torch.Tensor:
        for step in translated:
            image = step(image)
        return image

    return apply


def decode_jpegs(datas: Sequence[bytes], device: str | torch.device) -> list[torch.Tensor | None]:
    """Each JPEG as uint8 (3, H, W) on ``device``, upright by its EXIF orientation; None for
    a file the decoder refuses (the caller falls back to PIL for it)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders for TorchCodec's, which is not a dependency
        # (yet): the warning would repeat for every batch.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
        except RuntimeError:  # one refused file fails the batch call: decode one by one
            decoded: list[torch.Tensor | None] = []
            for data in encoded:
                try:
                    decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device,
                                               apply_exif_orientation=True))
                except RuntimeError:
                    decoded.append(None)
            return decoded
