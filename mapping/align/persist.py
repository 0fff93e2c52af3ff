"""Aligners on disk: tensors in safetensors, everything else in a JSON sidecar beside them.

Both files can be opened without compsearch (``safetensors.torch.load_file``, ``json``).
``aligner.safetensors`` holds ``weight`` (components, d_model, d_clip) and ``bias``
(d_clip); an identity aligner stores only its (zero) bias. ``aligner.json`` holds
:class:`AlignerMeta`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import safetensors.torch
from safetensors import SafetensorError

from compsearch.mapping.align.aligner import Aligner, AlignerMeta
from compsearch.mapping.align.files import aligner_paths
from compsearch.mapping.errors import CompsearchError

FORMAT_VERSION = 1


class AlignerMismatchError(CompsearchError):
    """An aligner used with a model, decomposition or CLIP it was not trained for."""


def save_aligner(aligner: Aligner, path: str | Path) -> Path:
    """Write ``aligner``; returns the safetensors path (the sidecar sits beside it)."""
    tensors_path, sidecar_path = aligner_paths(path)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"bias": aligner.bias.detach().float().contiguous()}
    if aligner.weight is not None:
        tensors["weight"] = aligner.weight.detach().float().contiguous()
    safetensors.torch.save_file(tensors, tensors_path, metadata={"format": "compsearch-aligner"})
    sidecar = {"format_version": FORMAT_VERSION, **asdict(aligner.meta)}
    sidecar_path.write_text(json.dumps(sidecar, indent=2) + "\n")
    return tensors_path


def load_aligner(path: str | Path) -> Aligner:
    """Read an aligner written by :func:`save_aligner`, checking tensors against the sidecar."""
    tensors_path, sidecar_path = aligner_paths(path)
    for required in (tensors_path, sidecar_path):
        if not required.is_file():
            raise CompsearchError(
                f"aligner file {required} does not exist",
                "train one with `compsearch align` (it writes NAME.safetensors and NAME.json)",
            )
    try:
        sidecar = json.loads(sidecar_path.read_text())
        known = {field.name for field in fields(AlignerMeta)}
        meta = AlignerMeta(**{key: value for key, value in sidecar.items() if key in known})
        tensors = safetensors.torch.load_file(tensors_path)
    except (json.JSONDecodeError, TypeError, SafetensorError, OSError) as error:
        raise CompsearchError(
            f"{tensors_path} / {sidecar_path.name} is not a readable compsearch aligner ({error})",
            "retrain it with `compsearch align`",
        ) from error
    weight = tensors.get("weight")
    expected = (len(meta.component_names), meta.model_dim, meta.clip_dim)
    if "bias" not in tensors or tensors["bias"].shape != (meta.clip_dim,) or (
        weight is None and not meta.identity
    ) or (weight is not None and tuple(weight.shape) != expected):
        raise AlignerMismatchError(
            f"{tensors_path} does not match its sidecar (expected weight {expected}, "
            f"bias ({meta.clip_dim},))",
            "the two files come from different runs; retrain with `compsearch align`",
        )
    return Aligner(meta, weight, tensors["bias"])


def check_aligner(
    aligner: Aligner,
    component_names: list[str],
    model_dim: int,
    model_name: str | None = None,
    model_weights_id: str | None = None,
) -> None:
    """Raise :class:`AlignerMismatchError` unless ``aligner`` maps exactly these components
    (of this model, with these weights, when they are given)."""
    meta = aligner.meta
    if model_name is not None and model_name != meta.model_name:
        raise AlignerMismatchError(
            f"the aligner was trained for {meta.model_name}, not {model_name}",
            f"use --model {meta.model_name} or train an aligner for {model_name}",
        )
    if model_weights_id is not None and model_weights_id != meta.model_weights_id:
        raise AlignerMismatchError(
            f"the aligner was trained on {meta.model_name} weights {meta.model_weights_id}, "
            f"not {model_weights_id}",
            "pass the weights it was trained with (--weights), or retrain it",
        )
    if model_dim != meta.model_dim:
        raise AlignerMismatchError(
            f"the aligner maps {meta.model_dim}-d contributions, the model gives {model_dim}-d",
            "train an aligner for this model with `compsearch align`",
        )
    if component_names != meta.component_names:
        missing = [name for name in meta.component_names if name not in component_names]
        extra = [name for name in component_names if name not in meta.component_names]
        raise AlignerMismatchError(
            f"the decomposition's components differ from the aligner's "
            f"(missing {missing[:4]}, unexpected {extra[:4]})",
            f"decompose from the aligner's first block ({meta.first_block}) or retrain the aligner",
        )
