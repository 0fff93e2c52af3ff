"""Describing heads in words: TextSpan (Gandelsman et al.) on aligned head outputs.

For one head, greedily pick from a text bank the direction along which the head's aligned
outputs vary most, project that direction out of both the outputs and the bank, and
repeat: the picks name the head's main, mutually orthogonal directions of variation.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from compsearch.mapping.align import Aligner
from compsearch.mapping.align.features import aligned_batches
from compsearch.mapping.errors import CompsearchError, warn_if_few_images
from compsearch.mapping.images import SourceSpec
from compsearch.mapping.models import LoadedModel
from compsearch.mapping.properties.text import TextEncoder

DEFAULT_BANK = Path(__file__).with_name("text_bank.yaml")
TEXT_BATCH = 256


@dataclass(frozen=True)
class SpanPick:
    index: int  # into the text bank
    variance: float  # of the head's outputs along the text, after earlier picks were removed
    share: float  # ``variance`` over the head's total variance


def text_span(outputs: torch.Tensor, bank: torch.Tensor, count: int) -> list[SpanPick]:
    """TextSpan on one head: ``outputs`` (images, d), ``bank`` (texts, d) text embeddings."""
    residual = (outputs - outputs.mean(0)).double()
    texts = bank.double().clone()
    total = residual.pow(2).sum(1).mean().item()
    picks: list[SpanPick] = []
    for _ in range(min(count, *texts.shape)):
        norms = texts.norm(dim=1)
        usable = norms > 1e-6  # texts already spanned by earlier picks have nothing left
        if not usable.any():
            break
        units = texts / norms.clamp_min(1e-12)[:, None]
        variance = (residual @ units.T).pow(2).mean(0).masked_fill(~usable, -1.0)
        index = int(variance.argmax())
        direction = units[index]
        residual -= torch.outer(residual @ direction, direction)
        texts -= torch.outer(texts @ direction, direction)
        picks.append(SpanPick(index, variance[index].item(), variance[index].item() / total if total else 0.0))
    return picks


def read_text_bank(path: str | Path | None = None) -> list[str]:
    """The bank's descriptions: a YAML list (or ``descriptions:`` list), or a text file with
    one description a line; the shipped bank when ``path`` is None."""
    path = Path(path).expanduser() if path else DEFAULT_BANK
    try:
        text = path.read_text()
    except OSError as error:
        raise CompsearchError(f"cannot read text bank {path} ({error})", "pass a text file, one description a line") from error
    if path.suffix in {".yaml", ".yml"}:
        data = yaml.safe_load(text)
        entries = data.get("descriptions") if isinstance(data, dict) else data
    else:
        entries = text.splitlines()
    bank = [str(entry).strip() for entry in entries or [] if str(entry).strip()]
    if not bank:
        raise CompsearchError(f"text bank {path} holds no descriptions", "one description a line")
    return bank


def select_heads(component_names: Sequence[str], patterns: Sequence[str] = ()) -> list[str]:
    """Attention heads among ``component_names`` matching any of ``patterns`` (names or
    shell-style globs such as ``blocks.11.attn.*``); all heads when none is given."""
    heads = [name for name in component_names if ".attn.h" in name]
    if not patterns:
        return heads
    chosen = [name for name in heads if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)]
    if not chosen:
        raise CompsearchError(
            f"no attention head matches {', '.join(patterns)} (only heads are described, not MLPs, init or bias)",
            f"the heads are {head_ranges(heads) or 'none'}; globs such as '{_glob_example(heads)}' work",
        )
    return chosen


def head_ranges(heads: Sequence[str]) -> str:
    """``blocks.10.attn.h0–h11, blocks.11.attn.h0–h11``: a long list of heads, short."""
    groups: dict[str, list[str]] = {}
    for head in heads:
        prefix, _, number = head.rpartition(".h")
        groups.setdefault(prefix, []).append(number)
    return ", ".join(f"{prefix}.h{numbers[0]}" + (f"–h{numbers[-1]}" if len(numbers) > 1 else "")
                     for prefix, numbers in groups.items())


def _glob_example(heads: Sequence[str]) -> str:
    return heads[-1].rpartition(".h")[0] + ".*" if heads else "blocks.11.attn.*"


def embed_bank(bank: Sequence[str], encode_text: TextEncoder) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([
            F.normalize(encode_text(list(bank[start:start + TEXT_BATCH])).float().cpu(), dim=-1)
            for start in range(0, len(bank), TEXT_BATCH)
        ])


@dataclass
class TextShare:
    text: str
    share: float  # of the head's variance along this text, once earlier picks were removed


@dataclass
class HeadDescription:
    head: str
    texts: list[TextShare]  # TextSpan's picks, in the order picked


@dataclass
class HeadDescriptions:
    """What ``compsearch describe`` reports (the fields are its JSON)."""

    model_name: str
    clip_name: str
    images: int
    heads: list[HeadDescription]


def describe_heads(
    model: LoadedModel,
    aligner: Aligner,
    images: SourceSpec,
    encode_text: TextEncoder,
    bank: Sequence[str],
    heads: Sequence[str] = (),
    count: int = 5,
    batch_size: int = 32,
    progress: bool = False,
    workers: int = 0,
) -> HeadDescriptions:
    """Each chosen head's TextSpan picks from ``bank`` over the probe set ``images`` (a
    folder, a list or Parquet file, …; unreadable images skipped with a warning)."""
    chosen = select_heads(aligner.component_names, heads)
    positions = [aligner.component_names.index(name) for name in chosen]
    outputs = torch.cat([
        mapped[:, positions] for _, mapped in aligned_batches(model, aligner, images, batch_size, workers, progress)
    ])
    warn_if_few_images(len(outputs), "head variances are measured", "--images")
    embedded = embed_bank(bank, encode_text)
    return HeadDescriptions(model.name, aligner.meta.clip_name, len(outputs), [
        HeadDescription(head, [TextShare(bank[pick.index], pick.share)
                               for pick in text_span(outputs[:, column], embedded, count)])
        for column, head in enumerate(chosen)
    ])


def format_descriptions(report: HeadDescriptions) -> str:
    """The text people read: per head, its picks with their share of the head's variance."""
    lines = [
        f"{report.model_name} heads in {report.clip_name} space, over {report.images} images. Per head, in the "
        "order picked, the texts along which its outputs vary most, each with the share of the head's variance "
        "along it once the texts above were projected out (the shares add up to what the texts explain together, "
        "at most 100 %):",
    ]
    for head in report.heads:
        lines += ["", head.head] + [f"  {pick.share:6.1%}  {pick.text}" for pick in head.texts]
    return "\n".join(lines)
