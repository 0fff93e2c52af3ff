"""A ranking: per property, the model's components best first and the k to sum (JSON on disk).

This file is what the indexer consumes: ``Ranking.load(path).top("colour")`` names the
components whose aligned contributions make the colour vector v_colour(x).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import torch
import yaml

from compsearch.mapping.errors import CompsearchError, warn
from compsearch.mapping.rank.auto_k import NEIGHBOURS, KCurve
from compsearch.mapping.rank.scores import constant_components, contrast_scores, rank_components

# 2: per property, the ``constant`` components left out (absent in 1: loads as []);
# 3: ``example_images`` and, per property, the ``k_curve`` of --k auto (absent in 2: 0 and None).
FORMAT_VERSION = 3
TOPK_FILE = Path(__file__).with_name("topk.yaml")


@cache
def _topk_table() -> dict:
    return yaml.safe_load(TOPK_FILE.read_text())


def model_family(model_name: str) -> str | None:
    """The reference family of ``model_name`` (``dinov2``, ``dino``, ``deit``, ``swin``, ``maxvit``)."""
    lowered = model_name.lower()
    for entry in _topk_table()["families"]:
        if any(pattern in lowered for pattern in entry["match"]):
            return entry["family"]
    return None


def default_k(model_name: str, property_name: str) -> int:
    """The reference top-k for ``property_name`` on ``model_name``'s family."""
    table = _topk_table()
    family = model_family(model_name)
    for entry in table["families"]:
        if entry["family"] == family:
            return int(entry["k"].get(property_name, entry["k"].get("default", table["default"])))
    return int(table["default"])


@dataclass
class PropertyRanking:
    """One property's components, best first, with the score they were ranked by.

    Image-independent components (no variance over the probe set, e.g. ``bias``) carry no
    property; they are never ranked and are listed apart in ``constant``.
    """

    name: str
    source: str  # "text" (scored against CLIP text) or "examples" (labelled images)
    values: list[str]  # the descriptions, or the example folders' value names
    components: list[str]
    scores: list[float]  # the ranking score: S_p − max_{q≠p} S_q with several properties
    own_scores: list[float]  # S_p itself (or the label's variance share)
    k: int
    constant: list[str] = field(default_factory=list)
    # The prompt templates a text property's values were embedded with; an index built from
    # this ranking embeds text queries on the property with them (empty: examples, or a
    # ranking saved before they were kept, whose indexes fall back to built-in templates).
    templates: list[str] = field(default_factory=list)
    # With --k auto: the held-out separation curve k was chosen from (None: k was given).
    k_curve: KCurve | None = None

    @property
    def top(self) -> list[str]:
        return self.components[:self.k]


def property_rankings(
    component_names: list[str],
    own_scores: dict[str, torch.Tensor],
    source: str,
    values: dict[str, list[str]],
    k: dict[str, int],
    variances: dict[str, torch.Tensor],
    templates: dict[str, list[str]] | None = None,
) -> list[PropertyRanking]:
    """Rank components for each property by its contrast with the others (:func:`contrast_scores`).

    Scores of one ``source`` only are contrasted: correlations with text and label variance
    shares are different quantities. ``variances[p]`` (components,), over the images property
    p was scored on, picks out the constant components, which are left out: their score (0:
    a constant correlates with nothing) would beat every component whose contrast is negative.
    """
    rankings = []
    for name, contrasted in contrast_scores(own_scores).items():
        constant = constant_components(variances[name])
        if bool(constant.all()):
            raise CompsearchError(
                f"no component of the model varies over the images property {name!r} was scored on",
                "score it on at least two different images",
            )
        kept = [i for i, is_constant in enumerate(constant.tolist()) if not is_constant]
        if k[name] > len(kept):
            warn(f"k={k[name]} for {name!r} exceeds the {len(kept)} components that vary; all {len(kept)} are "
                 "summed, which is the full representation, not a property", "choose a smaller --k")
        kept_names = [component_names[i] for i in kept]
        ranked = rank_components(contrasted[kept], kept_names)
        order = [component_names.index(component) for component, _ in ranked]
        rankings.append(PropertyRanking(
            name=name, source=source, values=list(values[name]),
            components=[component for component, _ in ranked], scores=[score for _, score in ranked],
            own_scores=[own_scores[name][i].item() for i in order],
            k=max(1, min(k[name], len(kept))),
            constant=[component_names[i] for i in constant.nonzero().flatten().tolist()],
            templates=list((templates or {}).get(name, [])),
        ))
    return rankings


@dataclass
class Ranking:
    model_name: str
    model_weights_id: str
    aligner: str | None  # path of the aligner used, None for example-only rankings in model space
    clip_name: str | None
    first_block: str | None
    probe_images: int  # the images text properties were scored on
    properties: list[PropertyRanking] = field(default_factory=list)
    example_images: int = 0  # the labelled images example properties were scored on

    def get(self, name: str) -> PropertyRanking:
        for prop in self.properties:
            if prop.name == name:
                return prop
        raise CompsearchError(
            f"the ranking has no property {name!r}",
            f"it ranks {', '.join(p.name for p in self.properties)}; rerun `compsearch rank --property {name}`",
        )

    def top(self, name: str) -> list[str]:
        return self.get(name).top

    def save(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"format_version": FORMAT_VERSION, **asdict(self)}, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Ranking:
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text())
            data.pop("format_version", None)
            properties = [PropertyRanking(**{**entry, "k_curve": _curve(entry.get("k_curve"))})
                          for entry in data.pop("properties")]
            return cls(**data, properties=properties)
        except OSError as error:
            raise CompsearchError(f"cannot read ranking {path} ({error})",
                                  "write one with `compsearch rank … --out ranking.json`") from error
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CompsearchError(f"{path} is not a compsearch ranking ({error})",
                                  "write one with `compsearch rank … --out ranking.json`") from error


def _curve(entry: dict | None) -> KCurve | None:
    return None if entry is None else KCurve(**entry)


LEGEND = (
    "own: how much a component carries the property: S_p, its mean correlation with the property's text "
    "directions over the probe images (text), or ω², the share of its variance the example labels explain "
    "beyond chance (examples; ≈ 0 for an unrelated label, 1 when the label fixes it)\n"
    "score: own minus the highest own of the other properties of the same source (own itself when ranked "
    "alone): what components are ranked by; * = summed into the property's vector (the top k)"
)


def _scored_on(ranking: Ranking) -> str:
    parts = []
    if ranking.probe_images or any(prop.source == "text" for prop in ranking.properties):
        parts.append(f"{ranking.probe_images} probe images")
    if ranking.example_images:
        parts.append(f"{ranking.example_images} example images")
    aligner = f"aligner {ranking.aligner}" if ranking.aligner else "no aligner (scored in the model's own space)"
    return f"{ranking.model_name}: {', '.join(parts) or 'example images'}, {aligner}"


def _format_curve(curve: KCurve, chosen: int) -> list[str]:
    """The --k auto curve as three rows (k, own, leakage), the chosen k marked."""
    marks = [f"{k}{'*' if k == chosen else ''}" for k in curve.ks]
    return [
        f"   k chosen on {curve.held_out_images} held-out images: P@{NEIGHBOURS} over chance of the vector "
        "summing the top k (own values, and the most of another property's)",
        "   k        " + "".join(f"{mark:>6}" for mark in marks),
        "   own      " + "".join(f"{value:>+6.2f}" for value in curve.own),
        "   leakage  " + "".join(f"{value:>+6.2f}" for value in curve.leakage),
    ]


def format_ranking(ranking: Ranking, shown: int = 5) -> str:
    """The table people read: per property, at least ``shown`` components (the top k starred)
    and, with --k auto, the curve k was chosen from."""
    lines = [_scored_on(ranking), LEGEND]
    for prop in ranking.properties:
        lines.append(f"\n{prop.name} ({prop.source}, k={prop.k}{' auto' if prop.k_curve else ''})   score   own")
        for position, (name, score, own) in enumerate(zip(prop.components, prop.scores, prop.own_scores)):
            if position == max(shown, prop.k):
                break
            marker = "*" if position < prop.k else " "
            lines.append(f" {marker} {name:<28} {score:+.3f}  {own:+.3f}")
        if prop.constant:
            lines.append(f"   constant, not ranked: {', '.join(prop.constant)}")
        if prop.k_curve:
            lines += _format_curve(prop.k_curve, prop.k)
    return "\n".join(lines)
