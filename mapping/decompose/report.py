"""What ``compsearch decompose`` reports (and the HTTP API will): per image, the error of the
split and its largest components, as dataclasses whose fields are the JSON schema.

:func:`decompose_images` is the Python entry (PIL images in, a :class:`DecomposeReport`
out); :func:`format_report` is the table people read.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import PIL.Image
import torch

from compsearch.mapping.decompose import Decomposition, adapter_for, decompose
from compsearch.mapping.models import LoadedModel

TOKENS_SHOWN = 3  # per head with --tokens: enough to see where a head looks


@dataclass
class TokenShare:
    token: str  # "r3c4" (row, column of the patch grid) or "prefix0" (CLS / registers)
    share: float


@dataclass
class ComponentShare:
    """One component of one image: ``share`` = ⟨c, z⟩/‖z‖², which sums to 1 over components."""

    name: str
    norm: float
    share: float
    tokens: list[TokenShare] | None = None


@dataclass
class ImageReport:
    image: str
    output_norm: float
    relative_error: float  # ‖Σ_i c_i − z‖ / ‖z‖
    top: list[ComponentShare] = field(default_factory=list)


@dataclass
class DecomposeReport:
    model: str
    weights_id: str
    first_block: str
    num_components: int
    seconds: float  # decomposition only: model forward with hooks, no file reading
    images: list[ImageReport]
    images_per_second: float = field(init=False)

    def __post_init__(self) -> None:
        self.images_per_second = len(self.images) / self.seconds if self.seconds > 0 else float("inf")


def decompose_images(
    loaded: LoadedModel,
    images: Sequence[PIL.Image.Image],
    labels: Sequence[str],
    first_block: str | int | None = None,
    split_tokens: bool = False,
    top: int = 10,
    batch_size: int = 32,
) -> DecomposeReport:
    """Decompose ``images`` (named ``labels`` in the report) and keep each one's ``top``
    components by norm; with ``split_tokens``, also the tokens each top head reads most."""
    first = adapter_for(loaded.model, loaded.name).resolve_first_block(first_block)
    reports: list[ImageReport] = []
    seconds = 0.0
    num_components = 0
    for start in range(0, len(images), batch_size):
        batch = torch.stack([loaded.preprocess(image) for image in images[start:start + batch_size]])
        started = time.perf_counter()
        decomposition = decompose(loaded.model, batch.to(loaded.device), first, split_tokens, loaded.name)
        seconds += time.perf_counter() - started
        num_components = len(decomposition.names)
        reports += summarise(decomposition, labels[start:start + batch_size], top)
    return DecomposeReport(loaded.name, loaded.weights_id, first, num_components, seconds, reports)


def summarise(decomposition: Decomposition, labels: Sequence[str], top: int) -> list[ImageReport]:
    """Per image: the error of Σ c_i against z and the ``top`` components by norm."""
    contributions = decomposition.contributions.double()
    output = decomposition.output.double()
    norms = contributions.norm(dim=-1)
    shares = torch.einsum("bcd,bd->bc", contributions, output) / output.pow(2).sum(-1, keepdim=True)
    errors = decomposition.relative_error()
    reports = []
    for image, label in enumerate(labels):
        order = norms[image].argsort(descending=True)[:top].tolist()
        reports.append(ImageReport(
            image=label,
            output_norm=output[image].norm().item(),
            relative_error=errors[image].item(),
            top=[
                ComponentShare(
                    decomposition.names[c], norms[image, c].item(), shares[image, c].item(),
                    _token_shares(decomposition, image, decomposition.names[c]),
                )
                for c in order
            ],
        ))
    return reports


def _token_shares(decomposition: Decomposition, image: int, name: str) -> list[TokenShare] | None:
    """The tokens whose part of head ``name`` lies most along the head's output
    (⟨c_t, c⟩/‖c‖², which sums to 1 over tokens); None for non-head components."""
    for split in decomposition.token_splits or []:
        if name in split.component_names:
            per_token = split.contributions[image, split.component_names.index(name)].double()
            head = per_token.sum(0)
            shares = per_token @ head / head.pow(2).sum()
            columns = split.grid[1]
            return [
                TokenShare(
                    f"prefix{t}" if t < split.num_prefix_tokens
                    else "r{}c{}".format(*divmod(t - split.num_prefix_tokens, columns)),
                    shares[t].item(),
                )
                for t in shares.argsort(descending=True)[:TOKENS_SHOWN].tolist()
            ]
    return None


def format_report(report: DecomposeReport) -> str:
    """The human-readable table ``compsearch decompose`` prints."""
    lines = [
        f"{report.model} (weights {report.weights_id}): decomposed from {report.first_block} "
        f"into {report.num_components} components",
    ]
    for image in report.images:
        lines += [
            "",
            f"{image.image}: relative reconstruction error {image.relative_error:.2e} (‖z‖ = {image.output_norm:.3g})",
            f"  {'component':<28} {'norm':>9} {'share of z':>11}",
        ]
        for component in image.top:
            tokens = "" if not component.tokens else "   tokens: " + ", ".join(
                f"{t.token} {t.share:.2f}" for t in component.tokens
            )
            lines.append(f"  {component.name:<28} {component.norm:>9.4g} {component.share:>11.3f}{tokens}")
    lines += ["", f"decomposed {len(report.images)} image(s) in {report.seconds:.3f} s "
              f"({report.images_per_second:.1f} images/s)"]
    return "\n".join(lines)
