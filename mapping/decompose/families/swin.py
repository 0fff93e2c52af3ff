"""RepDecompose for timm's Swin Transformer (``timm.models.swin_transformer.SwinTransformer``).

z = ``forward_head(forward_features(x), pre_logits=True)``: stages ``layers.{s}`` (a
PatchMerging ``downsample`` at the start of every stage but the first, then the blocks
``layers.{s}.blocks.{b}``), a per-token final ``norm``, then the mean over the tokens.

Components: ``init`` (the stream entering the first decomposed block), per decomposed block
its heads ``layers.{s}.blocks.{b}.attn.h{h}`` (each head's output at every query position,
with ``proj.bias / H``) and its ``layers.{s}.blocks.{b}.mlp``, and ``bias`` last: the β of
every PatchMerging norm inside the range (through its reduction and all later maps) and the
final norm's β.

Default range: the last four blocks of the penultimate stage (all of it when it is shorter)
and the last stage; for Swin-B (depths 2, 2, 18, 2) that is the paper's ``layers.2.blocks.14``
onwards.

Why nothing is carried per token. After the decomposed range starts, everything on the way
to z is linear once each token's normalisation statistics are frozen (σ of each merged token
in PatchMerging, σ of each token in the final norm), and all of it factors into
(a) per-token *scalars* 1/σ and the 1/T of the mean, and (b) maps that are the same at every
token (centring, γ, ``reduction``). Only the 2×2 gather of PatchMerging depends on position:
which quarter of the merged vector a token lands in. So a stage-s token t reaches z as
``a_t · L_{slot(t)} x_t``, where ``a_t`` is the product of the 1/σ on its way (and 1/T), and
``slot(t)`` records the quarter it takes at every later merge (4^(merges) slots; 1 in the
last stage). Each branch output is therefore pooled over its tokens per slot, with weights
``a``, straight from the hooked forward pass, and only the pooled (batch, slots, dim)
vectors go through the slot maps ``L`` — the components are never materialised per token:
memory is the hooked branch outputs, O(batch × decomposed blocks × tokens × dim).
The slot maps depend on the weights only: they are built once per model (products of the
merges' weights, about half a forward pass at batch 1) and kept until a parameter they read
changes; for Swin-B from stage 0 they hold about 60 MB.
Heads are split after pooling: the input of ``attn.proj`` is the per-head A·V, so one einsum
with the per-head column blocks of ``proj.weight`` gives every head of a block.

Token split (``split_tokens``): for every decomposed block, ``TokenSplit.contributions``
(batch, heads, H_s·W_s, dim) holds, at each position t of that stage's grid (row-major,
no prefix tokens), the part of head h's component read from key token t: the value at t,
weighted by the attention every query of t's (shifted) window pays to it, each query
counted with its own readout weight and slot. Summing over t gives the head exactly.
Memory: the output itself plus an intermediate of (batch, tokens, heads, slots·head_dim),
which is small in the last two stages and reaches twice the output in stage 0 (64 slots).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformer,
    SwinTransformerBlock,
    WindowAttention,
    window_partition,
    window_reverse,
)
from torch import nn

from compsearch.mapping.decompose.base import (
    Compact,
    HookScope,
    TimmPreLogitsAdapter,
    TokenSplit,
    layer_norm_inverse_sigma,
    project_heads,
    register_adapter,
)
from compsearch.mapping.decompose.store import HEAD_SLOTS, MODEL, SCALAR, StoredArray, StoredComponents
from compsearch.mapping.errors import CompsearchError

DEFAULT_PENULTIMATE_BLOCKS = 4  # Swin-B: blocks 14–17 of stage 2, then stage 3 (the paper's range)
MEAN_POOLS = ("avg", "fast", "fastavg")  # timm's global-pool names that are a plain token mean


@dataclass
class _BlockCapture:
    """What the hooks keep from one decomposed block, per token as the forward pass made it."""

    head_inputs: torch.Tensor | None = None  # (batch·windows, window_area, attn_dim): input of attn.proj
    mlp: torch.Tensor | None = None  # (batch, tokens, dim): the MLP branch
    attention: torch.Tensor | None = None  # (batch·windows, heads, queries, keys), token split only
    values: torch.Tensor | None = None  # (batch·windows, keys, heads, head_dim), token split only


@dataclass
class _Readout:
    """How one stage's stream reaches z: ``z ⊇ Σ_t weights[t, j] · x_t @ maps[j]``."""

    weights: torch.Tensor  # (batch, H, W, slots): a_t on the slot of token t, zero elsewhere
    maps: torch.Tensor  # (slots, stage_dim, out_dim), contiguous: slots × stage_dim flatten to one matmul

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pool a (batch, H, W, dim) or (batch, H·W, dim) per-token tensor per slot: (batch, slots·dim)."""
        return torch.einsum("btj,btc->bjc", self.weights.flatten(1, 2), tokens.flatten(1, -2)).flatten(1)

    def read_out(self, pooled: torch.Tensor) -> torch.Tensor:
        """(…, slots·dim) pooled per slot → (…, out_dim); one matmul that reads the maps once."""
        return pooled @ self.maps.flatten(0, 1)

    @property
    def mass(self) -> torch.Tensor:
        """(batch, slots): Σ_t a_t per slot, what a constant added at every token is read with."""
        return self.weights.sum((1, 2))


@dataclass
class _Captured:
    """What one hooked forward pass keeps."""

    blocks: dict[tuple[int, int], _BlockCapture]  # (stage, index) → capture, in forward order
    init: torch.Tensor | None = None  # (batch, H, W, dim): the stream entering the first decomposed block
    inverse_sigmas: dict[int, torch.Tensor] = field(default_factory=dict)  # stage → (batch, H, W); -1: final norm
    readouts: dict[int, "_Readout"] = field(default_factory=dict)  # stage → readout, set by _compact

    @property
    def first_stage(self) -> int:
        return next(iter(self.blocks))[0]


@dataclass
class _SlotMaps:
    """The image-independent part of the readouts, from stage ``min(maps)`` on (see ``_readouts``)."""

    key: tuple  # the parameters it was built from: identity, storage, version, device, dtype
    maps: dict[int, torch.Tensor]  # stage → (slots, stage_dim, out_dim)
    merge_biases: dict[int, torch.Tensor]  # stage → (slots, out_dim): β of the merge that starts it, read out
    final_beta: torch.Tensor  # (out_dim,): the final norm's β


@register_adapter
class SwinAdapter(TimmPreLogitsAdapter[_Captured]):
    module_classes = (SwinTransformer,)
    family = "Swin"
    supported_hint = "use a timm SwinTransformer (V1) with LayerNorms and 'avg' pooling, e.g. swin_base_patch4_window7_224"

    def __init__(self, model: nn.Module, model_name: str) -> None:
        super().__init__(model, model_name)
        # Built on first use and rebuilt only when a parameter it reads changes: at batch 1,
        # rebuilding them (products of the merges' weights) cost about half a forward pass.
        self._slot_map_cache: _SlotMaps | None = None

    def _check_supported(self) -> None:
        model = self.model
        pool_type = getattr(getattr(model.head, "global_pool", None), "pool_type", None)
        if pool_type not in MEAN_POOLS:
            raise self.unsupported(f"global_pool={pool_type!r} (not a token mean)")
        if not isinstance(model.norm, nn.LayerNorm):
            raise self.unsupported(f"a {type(model.norm).__name__} final norm")
        for stage, layer in enumerate(model.layers):
            merge = layer.downsample
            if not isinstance(merge, nn.Identity) and not (
                isinstance(merge, PatchMerging) and isinstance(merge.norm, nn.LayerNorm)
            ):
                raise self.unsupported(f"layers.{stage}.downsample is a {type(merge).__name__}")
            for index, block in enumerate(layer.blocks):
                if type(block) is not SwinTransformerBlock or type(block.attn) is not WindowAttention:
                    raise self.unsupported(f"layers.{stage}.blocks.{index} is a {type(block).__name__}")

    def _positions(self) -> list[tuple[int, int]]:
        """(stage, index) of every block, in forward order."""
        return [(stage, index) for stage, layer in enumerate(self.model.layers) for index in range(len(layer.blocks))]

    def block_names(self) -> list[str]:
        return [f"layers.{stage}.blocks.{index}" for stage, index in self._positions()]

    def default_first_block(self) -> str:
        stage = max(len(self.model.layers) - 2, 0)
        depth = len(self.model.layers[stage].blocks)
        return f"layers.{stage}.blocks.{max(depth - DEFAULT_PENULTIMATE_BLOCKS, 0)}"

    def _hook(self, hooks: HookScope, first: int, split_tokens: bool) -> _Captured:
        """Keep the stream entering the range, 1/σ of every norm after it (merges, final norm)
        and every decomposed block's branches."""
        model = self.model
        captured = _Captured({position: _BlockCapture() for position in self._positions()[first:]})
        stage, index = next(iter(captured.blocks))
        hooks.keep_input(model.layers[stage].blocks[index], captured, "init")
        norms = {-1: model.norm} | {
            later: model.layers[later].downsample.norm for later in range(captured.first_stage + 1, len(model.layers))
        }
        for key, norm in norms.items():
            hooks.keep_input(norm, captured.inverse_sigmas, key,
                             lambda stream, norm=norm: layer_norm_inverse_sigma(stream, norm).squeeze(-1))
        for (stage, index), capture in captured.blocks.items():
            block = model.layers[stage].blocks[index]
            attn = block.attn
            hooks.keep_input(attn.proj, capture, "head_inputs")
            hooks.keep_output(block.mlp, capture, "mlp")
            if split_tokens:
                # The explicit path passes the softmaxed A through attn.softmax.
                hooks.materialise_attention(attn)
                hooks.keep_output(attn.softmax, capture, "attention")
                hooks.keep_output(attn.qkv, capture, "values",
                                  lambda qkv, attn=attn: qkv.unflatten(-1, (3, attn.num_heads, -1))[:, :, 2])
        return captured

    def _compact(self, captured: _Captured, images: torch.Tensor) -> Compact:
        """Heads as per-slot A·V means (slots × head_dim) where that is smaller than z, else as
        c_i; MLP branches and ``init`` as c_i; every stage's per-slot masses as scalars."""
        first_stage = captured.first_stage
        grids = _stage_grids(captured.init, first_stage, len(self.model.layers))
        readouts = captured.readouts = self._readouts(first_stage, grids, captured.inverse_sigmas)
        # Per stage, what is stored as c_i: (array name, components, pooled per slot (batch, n, slots·dim)).
        to_read_out: dict[int, list[tuple[str, list[str], torch.Tensor]]] = {
            first_stage: [("init", ["init"], readouts[first_stage].pool(captured.init).unsqueeze(1))]
        }
        names, arrays = ["init"], {}
        for (stage, index), capture in captured.blocks.items():
            block_name = f"layers.{stage}.blocks.{index}"
            block = self.model.layers[stage].blocks[index]
            readout = readouts[stage]
            head_names = [f"{block_name}.attn.h{head}" for head in range(block.attn.num_heads)]
            mixed = self._pooled_mixed(block, capture, readout)  # (batch, heads, slots, head_dim)
            if mixed[0].numel() < self.model.num_features * block.attn.num_heads:
                arrays[f"{block_name}.attn"] = StoredArray(mixed, HEAD_SLOTS, head_names)
            else:
                pooled = _project_pooled(block.attn, mixed, readout.mass)
                to_read_out.setdefault(stage, []).append((f"{block_name}.attn", head_names, pooled))
                arrays[f"{block_name}.attn"] = None  # keeps the forward order; filled below
            to_read_out.setdefault(stage, []).append(
                (f"{block_name}.mlp", [f"{block_name}.mlp"], readout.pool(capture.mlp).unsqueeze(1))
            )
            arrays[f"{block_name}.mlp"] = None
            names += [*head_names, f"{block_name}.mlp"]
        arrays = {"init": None, **arrays}
        for stage, entries in to_read_out.items():
            # One matmul per stage reads its slot maps once.
            read = readouts[stage].read_out(torch.cat([pooled for _, _, pooled in entries], dim=1))
            for (name, components, _), part in zip(entries, read.split([len(c) for _, c, _ in entries], dim=1)):
                arrays[name] = StoredArray(part, MODEL, components)
        for stage, readout in readouts.items():
            arrays[f"layers.{stage}.slot_mass"] = StoredArray(readout.mass, SCALAR)
        return [*names, "bias"], arrays, {}

    def _expand(self, stored: StoredComponents, captured: _Captured | None) -> torch.Tensor:
        masses = {int(name.split(".")[1]): array.data for name, array in stored.arrays.items() if array.space == SCALAR}
        slot_maps = self._slot_maps(min(masses))
        parts = []
        for name, array in stored.arrays.items():
            if array.space == MODEL:
                parts.append(array.data)
            elif array.space == HEAD_SLOTS:
                stage = int(name.split(".")[1])
                pooled = _project_pooled(self.model.get_submodule(name), array.data, masses[stage])
                parts.append(pooled @ slot_maps.maps[stage].flatten(0, 1))
        bias = slot_maps.final_beta.expand(stored.batch, -1)
        for stage in range(len(self.model.layers) - 1, min(masses), -1):
            bias = bias + masses[stage] @ slot_maps.merge_biases[stage]
        return torch.cat([*parts, bias.unsqueeze(1)], dim=1)

    def _token_splits(self, captured: _Captured, images: torch.Tensor) -> list[TokenSplit]:
        return [
            self._token_split(f"layers.{stage}.blocks.{index}", self.model.layers[stage].blocks[index], capture,
                              captured.readouts[stage])
            for (stage, index), capture in captured.blocks.items()
        ]

    def _readouts(
        self, first_stage: int, grids: list[tuple[int, int]], inverse_sigmas: dict[int, torch.Tensor]
    ) -> dict[int, _Readout]:
        """Each decomposed stage's readout, built back from the final norm.

        Last stage: a_t = (1/σ_t)/T for the final norm and the mean. Going back through the
        merge that starts stage s+1, a child token takes its merged token's a times that
        token's 1/σ of the merge norm, in the slot of its quarter. The slot maps are the
        image-independent part (:meth:`_slot_maps`); a merge's β is read with its stage's mass.
        """
        slot_maps = self._slot_maps(first_stage)
        last = len(self.model.layers) - 1
        inverse_sigma = inverse_sigmas[-1]
        readout = _Readout(weights=(inverse_sigma / inverse_sigma[0].numel()).unsqueeze(-1), maps=slot_maps.maps[last])
        readouts = {last: readout}
        for stage in range(last, first_stage, -1):
            readout = _Readout(
                weights=_spread_to_quarters(readout.weights * inverse_sigmas[stage].unsqueeze(-1), grids[stage - 1]),
                maps=slot_maps.maps[stage - 1],
            )
            readouts[stage - 1] = readout
        return readouts

    def _slot_maps(self, first_stage: int) -> _SlotMaps:
        """The slot maps down to ``first_stage``, from the cache while the parameters they are
        built from are unchanged (same tensors, storage, in-place version, device and dtype)."""
        model = self.model
        merges = [model.layers[stage].downsample for stage in range(1, len(model.layers))]
        key = tuple(
            (id(parameter), parameter.data_ptr(), parameter._version, parameter.device, parameter.dtype)
            for module in (model.norm, *merges)
            for parameter in module.parameters()
        )
        cached = self._slot_map_cache
        if cached is None or cached.key != key or min(cached.maps) > first_stage:
            cached = self._slot_map_cache = _build_slot_maps(model, first_stage, key)
        return cached

    @staticmethod
    def _pooled_mixed(block: SwinTransformerBlock, capture: _BlockCapture, readout: _Readout) -> torch.Tensor:
        """(batch, heads, slots, head_dim): every head's A·V at every query, averaged per slot
        with weights a / mass (so proj.bias / H enters once per slot, see :func:`_project_pooled`)."""
        attn = block.attn
        batch, slots = readout.mass.shape
        query_weights = _to_windows(block, readout.weights).reshape(batch, -1, slots)
        head_inputs = capture.head_inputs.reshape(batch, -1, capture.head_inputs.shape[-1])
        mass = readout.mass.clamp_min(torch.finfo(readout.mass.dtype).tiny)  # empty slots only past odd edges
        mixed = torch.einsum("btj,btk->bjk", query_weights, head_inputs) / mass.unsqueeze(-1)
        return mixed.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)

    def _token_split(
        self, block_name: str, block: SwinTransformerBlock, capture: _BlockCapture, readout: _Readout
    ) -> TokenSplit:
        if _padding(block, readout.weights.shape[1:3]) != (0, 0):
            raise CompsearchError(
                f"{block_name} of {self.model_name} pads its {tuple(readout.weights.shape[1:3])} grid "
                f"to whole {block.window_size} windows, and the padding tokens it attends to have no "
                "place on the image grid",
                "use an image size whose stage grids are multiples of the window size "
                "(e.g. 224 for window 7), or decompose without the token split",
            )
        proj, num_heads = block.attn.proj, block.attn.num_heads
        grid = readout.weights.shape[1:3]
        # α[k, h, j]: attention paid to key k by the queries of its window, each weighted by a_q on its slot j.
        alpha = torch.einsum("wqj,whqk->wkhj", _to_windows(block, readout.weights), capture.attention)
        alpha = _from_windows(block, alpha.flatten(2), grid).flatten(1, 2).unflatten(-1, (num_heads, -1))
        values = _from_windows(block, capture.values.flatten(2), grid).flatten(1, 2).unflatten(-1, (num_heads, -1))
        # Slot map ∘ head h's column block of proj.weight, and slot map of each head's proj.bias / H.
        value_maps = torch.einsum("jcd,chk->jhdk", readout.maps, proj.weight.unflatten(1, (num_heads, -1)))
        head_bias = proj.bias / num_heads if proj.bias is not None else proj.weight.new_zeros(proj.out_features)
        bias_maps = torch.einsum("jcd,c->jd", readout.maps, head_bias)  # (slots, out_dim)
        weighted_values = alpha.unsqueeze(-1) * values.unsqueeze(-2)  # (batch, tokens, heads, slots, head_dim)
        contributions = torch.einsum("bthjk,jhdk->bhtd", weighted_values, value_maps)
        contributions = contributions + torch.einsum("bthj,jd->bhtd", alpha, bias_maps)
        return TokenSplit(
            block=block_name,
            component_names=[f"{block_name}.attn.h{head}" for head in range(num_heads)],
            contributions=contributions,
            grid=tuple(grid),
        )


def _project_pooled(attn: WindowAttention, mixed: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Per-slot head means (batch, heads, slots, head_dim) → the heads pooled per slot in the
    stage's stream (batch, heads, slots·dim): W_O^h m + proj.bias / H, scaled back by the mass."""
    batch, heads, slots, _ = mixed.shape
    projected = project_heads(mixed.transpose(1, 2).flatten(0, 1), attn.proj.weight, attn.proj.bias)
    projected = projected.unflatten(0, (batch, slots)) * mass[..., None, None]
    return projected.transpose(1, 2).flatten(2)


def _stage_grids(init: torch.Tensor, first_stage: int, num_stages: int) -> list[tuple[int, int]]:
    """(H, W) of every stage from the first decomposed one (earlier entries unused): merges halve, rounding up."""
    grids = [tuple(init.shape[1:3])] * (first_stage + 1)
    for _ in range(first_stage + 1, num_stages):
        height, width = grids[-1]
        grids.append(((height + 1) // 2, (width + 1) // 2))
    return grids


def _build_slot_maps(model: SwinTransformer, first_stage: int, key: tuple) -> _SlotMaps:
    """Slot maps from the last stage back to ``first_stage``.

    Last stage: one slot, L = γ·P (P centres). Going back through the merge that starts
    stage s+1, the slot map of quarter k is ``L_parent @ M_k`` with M_k the k-th column block
    of ``reduction · diag(γ) · P``; the merge's β enters through ``L_parent @ reduction(β)``.
    """
    last = len(model.layers) - 1
    like = next(model.parameters())
    eye = torch.eye(model.num_features, dtype=like.dtype, device=like.device)
    # In the parameters' own precision, whatever autocast the first call runs under: the maps outlive it.
    with torch.autocast(like.device.type, enabled=False):
        maps = {last: _centred_linear(model.norm, eye).T.contiguous().unsqueeze(0)}
        merge_biases = {}
        for stage in range(last, first_stage, -1):
            merge = model.layers[stage].downsample
            merge_biases[stage] = torch.einsum("jcd,c->jd", maps[stage], merge.reduction(_beta(merge.norm, eye)))
            quarters = _centred_linear(merge.norm, merge.reduction.weight).unflatten(1, (4, -1))  # (out, 4, in)
            maps[stage - 1] = torch.einsum("jcd,cke->jked", maps[stage], quarters).flatten(0, 1).contiguous()
    return _SlotMaps(key, maps, merge_biases, _beta(model.norm, eye))


def _centred_linear(norm: nn.LayerNorm, weight: torch.Tensor) -> torch.Tensor:
    """``weight · diag(γ) · P`` with P the centring over the norm's axis: the norm's linear part, σ aside."""
    scaled = weight * norm.weight if norm.weight is not None else weight
    return scaled - scaled.sum(-1, keepdim=True) / weight.shape[-1]


def _beta(norm: nn.LayerNorm, like: torch.Tensor) -> torch.Tensor:
    """The norm's β (zeros when it has none)."""
    return norm.bias if norm.bias is not None else like.new_zeros(norm.normalized_shape)


def _spread_to_quarters(merged: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Merged-token weights (batch, H', W', slots) → their 2×2 children (batch, H, W, 4·slots).

    A child at (2i + dh, 2j + dw) lands in quarter 2·dw + dh of the merged vector (PatchMerging's
    ``permute(0, 1, 3, 4, 2, 5)``), so its slot is ``4 · parent_slot + 2·dw + dh``. Children in
    the merge's padding are cut off.
    """
    quarter = torch.eye(4, dtype=merged.dtype, device=merged.device).view(2, 2, 4)  # [dw, dh, k]
    children = torch.einsum("bijs,wvk->bivjwsk", merged, quarter)
    batch, height, _, width, _, slots, _ = children.shape
    return children.reshape(batch, 2 * height, 2 * width, 4 * slots)[:, : grid[0], : grid[1]]


def _padding(block: SwinTransformerBlock, grid: tuple[int, int]) -> tuple[int, int]:
    """The zeros the block appends below and right of the grid to fill whole windows."""
    return tuple((window - size % window) % window for size, window in zip(grid, block.window_size))


def _to_windows(block: SwinTransformerBlock, tokens: torch.Tensor) -> torch.Tensor:
    """(batch, H, W, C) on the grid → (batch·windows, window_area, C), as the block lays out its queries."""
    if any(block.shift_size):
        tokens = torch.roll(tokens, shifts=tuple(-shift for shift in block.shift_size), dims=(1, 2))
    pad_h, pad_w = _padding(block, tokens.shape[1:3])
    tokens = F.pad(tokens, (0, 0, 0, pad_w, 0, pad_h))
    return window_partition(tokens, block.window_size).flatten(1, 2)


def _from_windows(block: SwinTransformerBlock, windows: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(batch·windows, window_area, C) → (batch, H, W, C): the block's own window_reverse, crop and roll back."""
    pad_h, pad_w = _padding(block, grid)
    tokens = window_reverse(
        windows.unflatten(1, block.window_size), block.window_size, grid[0] + pad_h, grid[1] + pad_w
    )[:, : grid[0], : grid[1]]
    if any(block.shift_size):
        tokens = torch.roll(tokens, shifts=block.shift_size, dims=(1, 2))
    return tokens
