"""``compsearch decompose``: split images' representations into components, show the largest.

:func:`decompose_images` is the Python entry (PIL images in, per-image reports out); the
click command only reads files, calls it and prints.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import PIL.Image
import torch

from mapping.decompose import Decomposition, adapter_for, decompose
from mapping.images import read_image
from mapping.models import LoadedModel, load_model

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

    @property
    def images_per_second(self) -> float:
        return len(self.images) / self.seconds if self.seconds > 0 else float("inf")


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


@click.command("decompose")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_name", required=True,
              help="timm name (deit_base_patch16_224, vit_base_patch16_224.dino, …), "
                   "open_clip NAME:PRETRAINED (ViT-B-16:laion2b_s34b_b88k) or local-dir:/folder.")
@click.option("--weights", type=click.Path(path_type=Path),
              help="Weights file or folder (otherwise $COMPSEARCH_WEIGHTS_DIR, then the hub cache).")
@click.option("--random-init", is_flag=True,
              help="Use random weights: components mean nothing, but the split is still exact.")
@click.option("--first-block", default=None, metavar="NAME|INDEX|all",
              help="First decomposed block, e.g. blocks.7, 7, -5 or all. Default: the paper's range "
                   "(e.g. blocks 7–11 of a 12-block ViT).")
@click.option("--tokens", "split_tokens", is_flag=True,
              help="Also split each attention head by token and show the tokens it reads most.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1),
              help="Components shown per image, largest norm first.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def decompose_command(
    images: tuple[Path, ...],
    model_name: str,
    weights: Path | None,
    random_init: bool,
    first_block: str | None,
    split_tokens: bool,
    top: int,
    batch_size: int,
    device: str,
    as_json: bool,
) -> None:
    """Split each IMAGE's representation into its components and show the largest.

    The model's output z (pre-logits for timm models, the normalised image embedding for
    CLIP) is written exactly as a sum of named parts: `init` (the stream entering the first
    decomposed block), every attention head (`blocks.9.attn.h7`), every MLP (`blocks.9.mlp`)
    and `bias`. For each image this prints the parts with the largest norm, their share of
    z (⟨c, z⟩/‖z‖², summing to 1), and the relative reconstruction error ‖Σc − z‖/‖z‖.
    """
    pictures = [read_image(path) for path in images]  # fail on a bad file before loading
    loaded = load_model(model_name, weights=weights, device=device, pretrained=not random_init)
    report = decompose_images(
        loaded, pictures, [str(path) for path in images], first_block, split_tokens, top, batch_size
    )
    if as_json:
        click.echo(json.dumps({**asdict(report), "images_per_second": report.images_per_second}, indent=2))
    else:
        click.echo(format_report(report))
