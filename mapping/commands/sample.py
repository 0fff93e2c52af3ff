"""``compsearch sample``: decompose a drawn sample image with DeiT-tiny, offline.

Works on a fresh machine: weights come from ``--weights``, ``$COMPSEARCH_WEIGHTS_DIR`` or
the hub cache when present; otherwise the command says so and uses random initialisation, for
which the decomposition is just as exact.
"""
from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

import click
import PIL.Image
from PIL import ImageChops, ImageDraw

from compsearch.mapping.errors import ModelLoadError

if TYPE_CHECKING:
    from compsearch.mapping.models import LoadedModel

SAMPLE_MODEL = "deit_tiny_patch16_224"
EXACTNESS = 1e-5  # docs/architecture.md, Decomposition: relative error of Σ c_i against z in fp32


def draw_sample_image(size: int = 224) -> PIL.Image.Image:
    """A small scene with colour, pattern, shape and background: a red-and-white striped
    ball on grass under a blue sky."""
    image = PIL.Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    horizon = size * 3 // 5
    for row in range(horizon):  # sky, lighter towards the horizon
        lightness = row / horizon
        draw.line([(0, row), (size, row)], fill=(int(90 + 120 * lightness), int(150 + 80 * lightness), 235))
    draw.rectangle([0, horizon, size, size], fill=(60, 140, 50))
    box = [size // 4, size // 4, size * 3 // 4, size * 3 // 4]
    draw.ellipse(box, fill=(255, 255, 255))
    stripes = PIL.Image.new("L", image.size, 0)
    stripe_draw = ImageDraw.Draw(stripes)
    for x in range(0, size, size // 14):
        stripe_draw.rectangle([x, 0, x + size // 28, size], fill=255)
    ball = PIL.Image.new("L", image.size, 0)
    ImageDraw.Draw(ball).ellipse(box, fill=255)
    image.paste((210, 30, 40), mask=ImageChops.multiply(stripes, ball))  # red stripes on the ball only
    return image


def load_sample_model(weights: Path | None) -> tuple[LoadedModel, str | None]:
    """DeiT-tiny with weights when any can be found; else random init and the reason why."""
    from compsearch.mapping.models import load_model

    try:
        return load_model(SAMPLE_MODEL, weights=weights), None
    except ModelLoadError as error:
        if weights is not None:  # the user named weights: failing to use them is an error
            raise
        return load_model(SAMPLE_MODEL, pretrained=False), error.problem


def top_classes(loaded: LoadedModel, image: PIL.Image.Image, count: int = 3) -> list[tuple[str, float]]:
    """The ImageNet classes the model sees, as a sanity check of real weights."""
    import torch
    from timm.data import ImageNetInfo

    with torch.no_grad():
        probabilities = loaded.model(loaded.preprocess(image)[None].to(loaded.device)).softmax(-1)[0]
    info = ImageNetInfo()
    values, indices = probabilities.topk(count)
    return [(info.index_to_description(i), p) for i, p in zip(indices.tolist(), values.tolist())]


@click.command("sample")
@click.option("--weights", type=click.Path(exists=True, path_type=Path),
              help="DeiT-tiny weights file or folder (otherwise $COMPSEARCH_WEIGHTS_DIR, then the hub cache; "
                   "without any, random weights).")
@click.option("--save-image", type=click.Path(path_type=Path), help="Also save the drawn sample image here.")
def sample_command(weights: Path | None, save_image: Path | None) -> None:
    """Decompose a drawn sample image with DeiT-tiny and show its largest components.

    Needs no network and no data: the image is drawn by code. Shows the component names
    (`init`, `blocks.9.attn.h2`, `blocks.10.mlp`, `bias`), their norms and shares of the
    representation, and checks that they add up to it exactly.
    """
    from compsearch.mapping.decompose.report import decompose_images, format_report
    from compsearch.mapping.models import WEIGHTS_DIR_ENV

    loaded, missing = load_sample_model(weights)
    if missing:
        click.echo(
            f"note: {missing}.\n"
            f"      Using random initialisation: the split below is still exact, but the components "
            f"carry no meaning.\n      For real weights, pass --weights FILE or put "
            f"{SAMPLE_MODEL}.safetensors in ${WEIGHTS_DIR_ENV}.\n"
        )
    image = draw_sample_image()
    if save_image:
        image.save(save_image)
    report = decompose_images(loaded, [image], ["sample image (striped ball on grass)"], top=8)
    click.echo(format_report(report))
    if not missing:
        classes = ", ".join(f"{name} {p:.2f}" for name, p in top_classes(loaded, image))
        click.echo(f"ImageNet classes DeiT-tiny sees: {classes}")
    error = report.images[0].relative_error
    if error > EXACTNESS:
        raise click.ClickException(f"reconstruction error {error:.2e} exceeds the {EXACTNESS:g} contract")
    # The next command must find the same weights this one used, or say it runs without.
    weights_option = f" --weights {weights}" if weights else " --random-init" if missing else ""
    click.echo(f"exact: Σ components = z to {error:.1e} (contract ≤ {EXACTNESS:g}).\n"
               f"Next: compsearch decompose YOUR.jpg --model {SAMPLE_MODEL}{weights_option} --tokens")
