"""What the commands share: their common options, path checks and the ``--json`` convention.

This module and the command modules import no model library (torch, timm, open_clip) at
import time — only inside the functions that load models — so ``compsearch CMD --help`` is
instant and a wrong argument or a missing file is reported before anything heavy loads.

The ``--json`` convention, for every command: stdout carries exactly one JSON document, the
fields of the library result dataclass the command got back (the schema the HTTP API
shares); progress bars, notes and warnings go to stderr. Without ``--json`` stdout carries
the text for people.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from compsearch.mapping.align.files import aligner_paths
from compsearch.mapping.commands.flags import DEVICE, JSON
from compsearch.mapping.errors import ModelLoadError

if TYPE_CHECKING:
    from compsearch.mapping.align import Aligner
    from compsearch.mapping.models import LoadedModel

Result = TypeVar("Result")
Decorator = Callable[[Callable], Callable]

def options(*decorators: Decorator) -> Decorator:
    """Several click options as one decorator, listed in ``--help`` in the order given."""

    def apply(command: Callable) -> Callable:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


def _existing_aligner(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None:
        missing = [path for path in aligner_paths(value) if not path.is_file()]
        if missing:
            raise click.BadParameter(
                f"{' and '.join(str(path) for path in missing)} not found; `compsearch align --out NAME` writes "
                "NAME.safetensors and NAME.json", ctx, param)
    return value


device_option = click.option(*DEVICE[0], **DEVICE[1])
model_options = options(
    click.option("--model", "model_name", required=True, metavar="NAME",
                 help="timm name (deit_base_patch16_224, vit_base_patch16_224.dino, …), open_clip NAME:PRETRAINED "
                      "(ViT-B-16:laion2b_s34b_b88k) or local-dir:/folder (an open_clip model folder)."),
    click.option("--weights", type=click.Path(exists=True, path_type=Path),
                 help="Weights file or folder of --model (otherwise $COMPSEARCH_WEIGHTS_DIR, then the hub cache)."),
    click.option("--random-init", is_flag=True,
                 help="Random weights (in align, the CLIP's too): try commands without weight files; the "
                      "components then mean nothing."),
    device_option,
    click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
                 help="Images per forward pass."),
)
clip_weights_option = click.option(
    "--clip-weights", type=click.Path(exists=True, path_type=Path),
    help="Weights file or folder of the CLIP (otherwise $COMPSEARCH_WEIGHTS_DIR, then the hub cache).")


def aligner_option(required: bool = False, purpose: str = "") -> Decorator:
    """``--aligner NAME``: both of its files are checked to exist when the command line is parsed."""
    return click.option("--aligner", "aligner_path", required=required, type=click.Path(path_type=Path),
                        callback=_existing_aligner,
                        help=f"Aligner written by `compsearch align --out NAME` (NAME or NAME.safetensors){purpose}.")


def images_option(purpose: str, required: bool = False) -> Decorator:
    """``--images``: a probe set, checked to exist when the command line is parsed."""
    return click.option("--images", required=required, type=click.Path(exists=True, path_type=Path),
                        help=f"{purpose}: a folder (searched recursively), a list file or a Parquet/CSV file "
                             "with a `path` column.")


first_block_option = click.option(
    "--first-block", default=None, metavar="NAME|INDEX|all",
    help="First decomposed block, e.g. blocks.7, 7, -5 or all. Default: the paper's range "
         "(e.g. blocks 7–11 of a 12-block ViT).")
json_option = click.option(*JSON[0], **JSON[1])


def load_model_from_options(model_name: str, weights: Path | None, random_init: bool, device: str) -> LoadedModel:
    from compsearch.mapping.models import load_model

    return load_model(model_name, weights=weights, device=device, pretrained=not random_init)


def load_clip(clip_name: str, clip_weights: Path | None, random_init: bool, device: str) -> LoadedModel:
    """The CLIP named by ``--clip``/``--clip-weights``."""
    with _naming_clip_weights():
        return load_model_from_options(clip_name, clip_weights, random_init, device)


def load_clip_for_aligner(aligner: Aligner, model: LoadedModel, clip_weights: Path | None) -> LoadedModel:
    """The CLIP whose space ``aligner`` maps into (for its text encoder)."""
    from compsearch.mapping.align.features import clip_for_aligner

    with _naming_clip_weights():
        return clip_for_aligner(aligner, model, clip_weights)


@contextmanager
def _naming_clip_weights() -> Iterator[None]:
    """Model-loading errors inside name ``--clip-weights``: the loader speaks of the model's
    ``--weights``, but what is being loaded here is the CLIP."""
    try:
        yield
    except ModelLoadError as error:
        raise ModelLoadError(*(text.replace("--weights", "--clip-weights") if text else text
                               for text in (error.problem, error.hint))) from error


def to_json(result: Any) -> str:
    """The ``--json`` document of a result: a dataclass's fields, recursively, or what its own
    ``to_json()`` gives where they are not plain JSON (tuple keys, tensors); a dict or list as
    it is. Paths become strings."""
    if hasattr(result, "to_json"):
        result = result.to_json()
    elif dataclasses.is_dataclass(result):
        result = dataclasses.asdict(result)
    return json.dumps(result, indent=2, default=str)


def emit(result: Result, as_json: bool, text: Callable[[Result], str]) -> None:
    """Print ``result`` on stdout as the ``--json`` convention says, or as ``text(result)``."""
    click.echo(to_json(result) if as_json else text(result))
