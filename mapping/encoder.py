"""PropertyEncoder: a batch of images → {property: v_p, "full": v} — the one object that
indexing and querying share, so an index and the queries against it are made alike.

Built once from (model, aligner, components per property), it resolves the decomposition
range once and maps every batch to:

- ``full``: the whole representation, Σ_i f_i(c_i) in CLIP space (with an aligner) or the
  model's own output z = Σ_i c_i (without one);
- ``p`` for each property: v_p = Σ_{i∈top-k(p)} f_i(c_i), or Σ_{i∈top-k(p)} c_i in model space.

Only the components some property needs are mapped one by one; ``full`` is one matmul.
Text queries embed in the same space (:meth:`PropertyEncoder.encode_text`): the text
embedding of the very CLIP the aligner maps into, averaged over a property's prompt
templates (docs/architecture.md, Property vectors). Model-space encoders have no text side.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from compsearch.mapping.align.aligner import Aligner
from compsearch.mapping.align.persist import AlignerMismatchError, check_aligner
from compsearch.mapping.decompose import StoredComponents, adapter_for, decompose
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.models import LoadedModel
from compsearch.mapping.identity import EncoderIdentity, Precision
from compsearch.mapping.names import FULL
from compsearch.mapping.properties.prompts import embed_texts


def default_precision(device: torch.device | str) -> Precision:
    """What a build uses unless told: bf16 autocast on CUDA (its tensor cores' fast path), fp32
    elsewhere."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


class PropertyEncoder:
    """Maps preprocessed image batches to one vector per property plus ``full``."""

    def __init__(
        self,
        model: LoadedModel,
        aligner: Aligner | None = None,
        properties: Mapping[str, Sequence[str]] | None = None,
        first_block: str | int | None = None,
        aligner_id: str | None = None,
        precision: Precision = "fp32",
        clip: LoadedModel | None = None,
    ) -> None:
        self.model = model
        self.aligner = aligner
        self.aligner_id = aligner_id
        self.precision: Precision = precision
        if clip is not None:
            _check_text_side(clip, aligner)
        self.clip = clip  # the text side, for text queries
        adapter = adapter_for(model.model, model.name)
        if aligner is not None:
            if first_block is not None and adapter.resolve_first_block(first_block) != aligner.meta.first_block:
                raise CompsearchError(
                    f"first block {first_block} differs from the aligner's ({aligner.meta.first_block})",
                    "drop --first-block: an aligned index decomposes from the aligner's first block",
                )
            first_block = aligner.meta.first_block
        self.first_block = adapter.resolve_first_block(first_block)
        self.properties = {name: list(components) for name, components in (properties or {}).items()}
        if FULL in self.properties:
            raise CompsearchError(f"{FULL!r} names the whole representation", "give the property another name")
        self._component_names: list[str] | None = None
        self._positions: dict[str, torch.Tensor] = {}

    @property
    def space(self) -> str:
        return "clip" if self.aligner is not None else "model"

    @property
    def names(self) -> list[str]:
        """The vectors each batch is mapped to: ``full`` first, then the properties."""
        return [FULL, *self.properties]

    def identity(self) -> EncoderIdentity:
        meta = self.aligner.meta if self.aligner is not None else None
        return EncoderIdentity(
            model_name=self.model.name, model_weights_id=self.model.weights_id, first_block=self.first_block,
            space=self.space, aligner_id=self.aligner_id, clip_name=meta.clip_name if meta else None,
            clip_weights_id=meta.clip_weights_id if meta else None, precision=self.precision,
            properties=self.properties,
        )

    def _resolve_components(self, names: list[str], model_dim: int) -> None:
        """Check the decomposition against the aligner and properties once, on the first batch."""
        if self.aligner is not None:
            check_aligner(self.aligner, names, model_dim, self.model.name, self.model.weights_id)
        for prop, components in self.properties.items():
            unknown = [name for name in components if name not in names]
            if unknown:
                raise CompsearchError(
                    f"property {prop!r} sums components {unknown[:4]} that {self.model.name} does not have "
                    f"when decomposed from {self.first_block}",
                    "rank the properties for this model and aligner (`compsearch rank`)",
                )
            self._positions[prop] = torch.tensor([names.index(name) for name in components])
        self._component_names = names

    def _autocast(self):
        """bf16 autocast on whatever device the model is on: a query on the CPU against an index
        built in bf16 on a GPU is computed the way its images were."""
        if self.precision == "bf16":
            return torch.autocast(self.model.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: (batch, dim) float32 on the CPU}`` for :attr:`names`, not normalised."""
        return self.encode_and_store(pixels, None)[0]

    def encode_images(self, images: Sequence[PIL.Image.Image]) -> dict[str, np.ndarray]:
        """``{name: (len(images), dim)}`` normalised float32 query vectors of RGB images,
        prepared by the model's own transform."""
        pixels = torch.stack([self.model.preprocess(image) for image in images])
        return {name: F.normalize(vectors, dim=-1).numpy() for name, vectors in self.encode(pixels).items()}

    @torch.inference_mode()
    def encode_and_store(self, pixels: torch.Tensor,
                         store: str | None) -> tuple[dict[str, torch.Tensor], StoredComponents | None]:
        """:meth:`encode`, and with ``store`` ("fp16" or "fp32") the batch's component store from
        the same forward pass (arrays in ``store``, scalars in fp32, on the CPU)."""
        with self._autocast():
            parts = decompose(self.model.model, pixels.to(self.model.device), self.first_block,
                              model_name=self.model.name, store=store is not None)
        stored = parts.stored.to(store, "cpu") if store is not None else None
        return self.vectors(parts.contributions, parts.names), stored

    @torch.inference_mode()
    def vectors(self, contributions: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        """:attr:`names`' vectors of components (batch, components, dim) named ``names`` — from a
        forward pass or expanded from a component store, mapped alike."""
        contributions = contributions.float()
        if self._component_names is None:
            self._resolve_components(names, contributions.shape[-1])
        vectors: dict[str, torch.Tensor] = {}
        positions = {prop: where.to(contributions.device) for prop, where in self._positions.items()}
        if self.aligner is None:
            vectors[FULL] = contributions.sum(1)
            for prop, where in positions.items():
                vectors[prop] = contributions[:, where].sum(1)
        else:
            aligner = self._aligner_on(contributions.device)
            vectors[FULL] = aligner.map_sum(contributions)
            for prop, where in positions.items():
                vectors[prop] = aligner.map_sum_of(contributions, where)
        return {name: vector.float().cpu() for name, vector in vectors.items()}

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """``(len(texts), d_clip)`` normalised: per text, the normalised mean of its prompts'
        normalised CLIP embeddings (each template filled with the text) — the t_j of rankings."""
        if self.clip is None:
            raise CompsearchError(
                f"this encoder has no text side ({self.space} space, no CLIP loaded)",
                "text queries need an index built with an aligner into a CLIP (`compsearch index --aligner`)",
            )
        return torch.from_numpy(embed_texts(self.clip.encode_text, texts, templates))

    def _aligner_on(self, device: torch.device) -> Aligner:
        if self.aligner.bias.device != device:
            self.aligner = Aligner(
                self.aligner.meta, None if self.aligner.weight is None else self.aligner.weight.to(device),
                self.aligner.bias.to(device),
            )
        return self.aligner


def _check_text_side(clip: LoadedModel, aligner: Aligner | None) -> None:
    """``clip`` must be the CLIP the aligner maps into (name and weights), or texts and images
    would land in different spaces."""
    if aligner is None:
        raise CompsearchError(
            "a model-space encoder (no aligner) cannot embed text",
            "build the index with an aligner into a CLIP (`compsearch index --aligner`) for text queries",
        )
    meta = aligner.meta
    if not clip.is_clip or clip.name != meta.clip_name or clip.weights_id != meta.clip_weights_id:
        raise AlignerMismatchError(
            f"the text encoder {clip.name} (weights {clip.weights_id}) is not the CLIP the aligner maps into "
            f"({meta.clip_name}, weights {meta.clip_weights_id})",
            f"load {meta.clip_name} with the weights it was aligned to (--clip-weights)",
        )

