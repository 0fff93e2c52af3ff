"""The component store: a compact, exact form of a decomposition, written once per image.

After the decomposed range everything a component passes through on its way to z is linear
once a few per-image scalars are frozen (1/σ of the linearised norms, CLIP's ‖·‖). So a
component is rebuilt exactly from a small per-image array and those scalars by maps that
depend on the weights only; :func:`compsearch.mapping.decompose.expand` applies them. Per
family (c_i in z-space; γ, P (centring), β of the final norm; s the per-image scalars):

- plain ViT (timm; DeiT, DINO, DINOv2, registers, LayerScale): pooling (CLS or token mean)
  is linear and comes before the one final LayerNorm, so with s = 1/σ of the pooled stream
  ``c_{l,h} = s·γ⊙P(λ_l⊙(W_O^h m_{l,h} + b_O/H))``, m_{l,h} = Σ_t A_{q,t} W_V^h LN1(x)_t + b_V^h
  (pooled over the pooled queries): stored m (head_dim per head), the pooled MLP branches and
  ``init`` in the residual stream (width), and s. 1 scalar.
- open_clip ViT: the same at the CLS token, then ``proj`` and the division by the image's
  ‖proj(ln_post(x))‖: c = s₁/s₂·proj(γ⊙P(·)); 2 scalars (ln_post's 1/σ, the embedding norm).
- MaxViT-tf: the head pools, then normalises: between a block and the head norm all maps
  are linear and position-independent in channels (average pools, 1×1 convs), so every
  branch is pooled with fixed spatial weights w (the adjoint of the pools; the image size is
  kept as ``geometry.grid``). Heads: m = Σ_q w_q (A·V)_q per head (head_dim), c = s·γ⊙P(M λ
  (W_O^h m + Σw·b_O/H)); conv and MLP branches and ``init`` pooled into the final channels
  (width). 1 scalar.
- Swin: the final LayerNorm is per token *before* the mean, and every PatchMerging
  normalises each merged token, so a token's σ's do not factor out of the pool: no single
  head_dim vector per head exists. A stage-s token t reaches z as a_t·L_{slot(t)} x_t (a_t the
  product of its 1/σ's and 1/T, slot(t) its quarter at each later merge, 4^(merges) slots),
  so a head is exact as one head_dim vector *per slot*, m_{h,j} = Σ_t a_{t,j}(A·V)_{t,h} / M_j
  with the per-slot masses M_j = Σ_t a_{t,j} as scalars: c_h = Σ_j M_j L_j(W_O^h m_{h,j} + b_O/H).
  That is 4^(merges)·head_dim numbers: smaller than z-space in the last stages (Swin-B: 32,
  128, 512 against 1024), larger in stage 0 (2048), where heads are stored as c_i. MLP
  branches and ``init`` are stored as c_i (per slot they would be 1024 in the last stage,
  2048 before it). Scalars: every stage's slot masses (1, 4, 16, 64 from the last stage
  back); ``bias`` depends on them (each merge's β, read with its mass).

``bias`` is never stored: it is rebuilt from the weights and the scalars. Arrays (one per
attention, MLP / conv branch and ``init``) are kept in the storage dtype (fp16 or fp32),
scalars always in fp32. fp32 storage rebuilds the components to float rounding (≤ 1e-5
relative); fp16 rounds each stored number to 2⁻¹¹ of itself, which rebuilds every component
to :data:`FP16_RELATIVE_ERROR` of its norm (≤ 6e-4 measured over the contract's models).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from compsearch.mapping.errors import CompsearchError

FORMAT = "compsearch.component-store/1"
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
SCALAR_DTYPE = torch.float32
FP16_RELATIVE_ERROR = 2e-3  # ‖expanded c_i − c_i‖ / ‖c_i‖ with fp16 arrays: 4 × fp16's 2⁻¹¹

# What an array holds per image (its ``space``):
HEAD = "head"  # (heads, head_dim): each head's attention-mixed value before W_O
HEAD_SLOTS = "head-slots"  # (heads, slots, head_dim): Swin, the same per readout slot
STREAM = "stream"  # (width,): a branch in the residual stream before the final norm
MODEL = "model"  # (components, dim) or (dim,): the contributions c_i themselves (z-space)
SCALAR = "scalar"  # (k,): per-image scalars, always fp32


@dataclass
class StoredArray:
    """One per-image array of a store and the components it rebuilds (none for scalars)."""

    data: torch.Tensor  # (batch, *shape)
    space: str
    components: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])


@dataclass
class StoredComponents:
    """The compact form of a batch's decomposition (see the module docstring).

    ``arrays`` are in forward order; :func:`compsearch.mapping.decompose.expand` rebuilds the
    ``names`` components from them. ``geometry`` (JSON values) holds what the maps depend on
    besides the weights, e.g. the grid entering the range.
    """

    model_name: str
    family: str
    first_block: str
    names: list[str]
    arrays: dict[str, StoredArray]
    geometry: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return next(iter(self.arrays.values())).data.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return next(array.data.dtype for array in self.arrays.values() if array.space != SCALAR)

    def to(self, dtype: str | torch.dtype, device: torch.device | str | None = None) -> StoredComponents:
        """A copy with the arrays in ``dtype`` ("fp16", "fp32" or a torch dtype) and the scalars in fp32."""
        dtype = _torch_dtype(dtype)
        arrays = {}
        for name, array in self.arrays.items():
            data = array.data.to(device=device, dtype=SCALAR_DTYPE if array.space == SCALAR else dtype)
            if not torch.isfinite(data).all():
                raise CompsearchError(f"component array {name} of {self.model_name} overflows {dtype}",
                                      "store the components in fp32 (--store fp32)")
            arrays[name] = replace(array, data=data)
        return replace(self, arrays=arrays)

    def layout(self) -> dict[str, Any]:
        """The JSON description of the rows (for a manifest): everything but the numbers."""
        values = [array for array in self.arrays.values() if array.space != SCALAR]
        scalars = [array for array in self.arrays.values() if array.space == SCALAR]
        dtype = self.dtype
        return {
            "format": FORMAT,
            "model": self.model_name,
            "family": self.family,
            "first_block": self.first_block,
            "names": list(self.names),
            "geometry": self.geometry,
            "dtype": _dtype_name(dtype),
            "scalar_dtype": _dtype_name(SCALAR_DTYPE),
            "arrays": [
                {"name": name, "space": array.space, "shape": list(array.shape), "components": array.components}
                for name, array in self.arrays.items()
            ],
            "values_per_image": sum(math.prod(array.shape) for array in values),
            "scalars_per_image": sum(math.prod(array.shape) for array in scalars),
            "bytes_per_image": sum(math.prod(array.shape) for array in values) * dtype.itemsize
            + sum(math.prod(array.shape) for array in scalars) * SCALAR_DTYPE.itemsize,
        }

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Two row matrices: ``values`` (batch, values_per_image) in the storage dtype and
        ``scalars`` (batch, scalars_per_image) in fp32, each the arrays flattened in layout order."""
        def concat(arrays: list[StoredArray], dtype: torch.dtype) -> torch.Tensor:
            if not arrays:
                return torch.empty(self.batch, 0, dtype=dtype)
            return torch.cat([array.data.flatten(1) for array in arrays], dim=1)

        arrays = list(self.arrays.values())
        return (concat([a for a in arrays if a.space != SCALAR], self.dtype),
                concat([a for a in arrays if a.space == SCALAR], SCALAR_DTYPE))

    @classmethod
    def from_flat(cls, layout: dict[str, Any], values: torch.Tensor, scalars: torch.Tensor) -> StoredComponents:
        """The store of rows written by :meth:`flat` under :meth:`layout`."""
        if layout.get("format") != FORMAT:
            raise CompsearchError(f"component store format {layout.get('format')!r} is not {FORMAT!r}",
                                  "rebuild the store with this version of compsearch")
        expected = (layout["values_per_image"], layout["scalars_per_image"])
        if (values.shape[1], scalars.shape[1]) != expected:
            raise CompsearchError(
                f"component store rows hold {values.shape[1]} values and {scalars.shape[1]} scalars per image, "
                f"its layout says {expected[0]} and {expected[1]}",
                "the store is damaged or from another index: rebuild it",
            )
        offsets = {False: 0, True: 0}
        arrays = {}
        for entry in layout["arrays"]:
            is_scalar = entry["space"] == SCALAR
            source = scalars if is_scalar else values
            size = math.prod(entry["shape"])
            start = offsets[is_scalar]
            data = source[:, start:start + size].reshape(len(source), *entry["shape"])
            offsets[is_scalar] = start + size
            arrays[entry["name"]] = StoredArray(data, entry["space"], list(entry["components"]))
        return cls(layout["model"], layout["family"], layout["first_block"], list(layout["names"]), arrays,
                   dict(layout["geometry"]))


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CompsearchError(f"unknown component store precision {dtype!r}", f"use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")

