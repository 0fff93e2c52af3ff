"""RepDecompose for timm MaxViT: ``MaxxVit`` built from ``MaxxVitBlock`` ('M') stages.

Anatomy (timm 1.0, ``maxxvit.py``): ``stem`` (convs + BatchNorm) → ``stages.{s}.blocks.{b}``
→ head. On the residual stream (NCHW between blocks, channels-last inside attention) a block is

- ``conv``: ``shortcut(x) + MBConv(x)``; the shortcut is the identity, or in the first
  block of a stage ``Downsample2d`` = average pool + 1×1 conv (linear; its bias is constant);
- ``attn_block``: ``x + ls1(attn(LN1(x)))`` with attention inside non-overlapping windows,
  then ``x + ls2(MLP(LN2(x)))``;
- ``attn_grid``: the same, attending across a dilated grid.

What z is. MaxViT-tf heads (``NormMlpClassifierHead``) are global average pool → LayerNorm
of the pooled vector → ``pre_logits`` Linear + tanh → ``fc``. The tanh layer is nonlinear,
so z is the output of the linear part, the pooled and normalised vector (the input of
``head.pre_logits``; for a head without a hidden layer that is the usual pre-logits output).
Configs that normalise every position *before* pooling (the ``maxvit_*_rw`` family) are
refused with a clear error.

Components: ``init`` (the stream entering the first decomposed block), then per decomposed
block ``….conv`` (the whole MBConv branch), ``….attn_block.attn.h{k}``,
``….attn_block.mlp``, ``….attn_grid.attn.h{k}``, ``….attn_grid.mlp``; last ``bias``: the
biases of downsampling 1×1 convs crossed after the point where a component enters, and the
head LayerNorm's β (both normalised like every other component, β added after).

Pooling early, exactly. Between any block and the head's LayerNorm everything is linear:
identity shortcuts, average pools and 1×1 convs of the downsampling shortcuts, the global
mean. Pools act on every channel alike and 1×1 convs on every position alike, so the pooled
share of a map m entering at some point is ``M Σ_q w_q m_q``: w fixed spatial weights (the
adjoint of the later pools applied to the global mean's uniform weights; uniform again for
2×2 pools of even maps), M the product of the later 1×1 conv weights. Each branch is thus
reduced to one vector per image inside its hook; no per-position maps outlive the forward
pass. Heads are averaged over query positions with these weights, then LayerNorm is
linearised with the pooled stream's own statistics.

Default range: the last two blocks of the penultimate stage and the whole last stage (the
paper's MaxViT-S: ``stages.2.blocks.3`` onwards for depths 2, 2, 5, 2).

Token split. Each head of a partition attention is split by the key token it reads from;
tokens are listed in row-major order of that stage's H×W feature map (``TokenSplit.grid``),
not in the windowed order attention sees them. A window ("block") head's keys for a query
are the query's own window of ``partition_size`` neighbours; a grid head's are the positions
sharing the query's offset modulo ``H / partition_size`` (a dilated lattice over the map).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from timm.layers import LayerScale, NormMlpClassifierHead
from timm.models.maxxvit import (
    AttentionCl,
    ConvNeXtBlock,
    Downsample2d,
    MaxxVit,
    MaxxVitBlock,
    MbConvBlock,
    PartitionAttentionCl,
    grid_partition,
    grid_reverse,
    window_partition,
    window_reverse,
)
from torch import nn

from compsearch.mapping.decompose.base import (
    Adapter,
    Compact,
    HookScope,
    TokenSplit,
    frozen_layer_norm,
    head_contributions,
    layer_norm_inverse_sigma,
    linearised_layer_norm,
    project_heads,
    register_adapter,
)
from compsearch.mapping.decompose.store import HEAD, SCALAR, STREAM, StoredArray, StoredComponents

PARTITIONS = ("attn_block", "attn_grid")
HEAD_NORM_SCALE = "head.norm.inverse_sigma"  # the stored scalar: 1/σ of the pooled stream


@dataclass
class _Landing:
    """How a map entering the stream at one point reaches the pooled, pre-norm vector."""

    weights: torch.Tensor  # (1, H, W): spatial weights of the global mean, pulled back here
    channels: torch.Tensor | None  # (C_final, C_here): later 1×1 convs; None = identity

    @property
    def mass(self) -> torch.Tensor:
        """What a spatially constant map of ones pools to (carries bias terms)."""
        return self.weights.sum()

    def to_final(self, vectors: torch.Tensor) -> torch.Tensor:
        """Map channel vectors (…, C_here) into the final channel space."""
        return vectors if self.channels is None else vectors @ self.channels.T

    def pool(self, channels_last: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) map → (B, C_final)."""
        return self.to_final(torch.einsum("bhwc,hw->bc", channels_last, self.weights[0]))


@dataclass
class _PartitionCapture:
    """One partition attention's branches, already pooled inside the hooks."""

    heads: torch.Tensor | None = None  # (B, heads, head_dim): A·V pooled over the queries, before proj
    tokens: torch.Tensor | None = None  # (B, heads, H·W, C_here) before LayerScale
    mlp: torch.Tensor | None = None  # (B, C_final)
    attention: torch.Tensor | None = None  # (B·windows, heads, keys): A weighted over queries
    values: torch.Tensor | None = None  # (B·windows, keys, heads, head_dim)


@dataclass
class _BlockCapture:
    conv: torch.Tensor | None = None  # (B, C_final)
    partitions: dict[str, _PartitionCapture] = field(default_factory=dict)


@dataclass
class _Captured:
    """What one hooked forward pass keeps."""

    blocks: list[tuple[str, MaxxVitBlock]]  # the decomposed blocks, in forward order
    captures: list[_BlockCapture]
    landings: dict[str, _Landing] = field(default_factory=dict)  # planned when the stream enters the range
    grid: tuple[int, int] = (0, 0)  # (H, W) of the stream entering the range: what the landings depend on
    init: torch.Tensor | None = None  # (B, C_final): the stream entering the range, pooled
    pooled: torch.Tensor | None = None  # (B, C_final): the head's pooled stream, the norm's input


@register_adapter
class MaxVitAdapter(Adapter[_Captured]):
    module_classes = (MaxxVit,)
    family = "MaxViT"
    supported_hint = (
        "use a MaxViT-tf model (maxvit_{tiny,small,base,large}_tf_*): 'M' blocks with "
        "channels-last attention, average-pool downsampling and a pool-then-norm head"
    )
    training_randomness = "BatchNorm batch statistics, dropout"

    def _blocks(self) -> list[tuple[str, MaxxVitBlock]]:
        return [
            (f"stages.{s}.blocks.{b}", block)
            for s, stage in enumerate(self.model.stages)
            for b, block in enumerate(stage.blocks)
        ]

    def _check_supported(self) -> None:
        model, unsupported = self.model, self.unsupported
        head = model.head
        if not isinstance(head, NormMlpClassifierHead) or not isinstance(model.norm, nn.Identity):
            raise unsupported("a LayerNorm on every position before pooling")
        if getattr(head.norm, "weight", None) is None or not hasattr(head.norm, "eps"):
            raise unsupported(f"a {type(head.norm).__name__} head norm")
        if "max" in head.global_pool.pool_type or not head.global_pool.pool_type:
            raise unsupported(f"global pooling {head.global_pool.pool_type!r}")
        for block_name, block in self._blocks():
            if not isinstance(block, MaxxVitBlock):
                raise unsupported(f"{block_name} is a {type(block).__name__}")
            if block.nchw_attn:
                raise unsupported(f"{block_name} runs attention in NCHW layout")
            if not isinstance(block.conv, (MbConvBlock, ConvNeXtBlock)):
                raise unsupported(f"{block_name}.conv is a {type(block.conv).__name__}")
            shortcut = block.conv.shortcut
            if isinstance(shortcut, Downsample2d):
                if not isinstance(shortcut.pool, nn.AvgPool2d):
                    raise unsupported(f"{block_name} downsamples with {type(shortcut.pool).__name__}")
            elif not isinstance(shortcut, nn.Identity):
                raise unsupported(f"{block_name}.conv has a {type(shortcut).__name__} shortcut")
            for _, partition in self._partitions(block):
                if type(partition.attn) is not AttentionCl:
                    raise unsupported(f"{block_name} attends with {type(partition.attn).__name__}")
                if not isinstance(partition.ls1, (LayerScale, nn.Identity)):
                    raise unsupported(f"{block_name} scales attention with {type(partition.ls1).__name__}")

    @staticmethod
    def _partitions(block: MaxxVitBlock) -> list[tuple[str, PartitionAttentionCl]]:
        """``(name, module)`` of the block's partition attentions (``attn_block`` may be absent)."""
        return [(name, getattr(block, name)) for name in PARTITIONS if getattr(block, name) is not None]

    def block_names(self) -> list[str]:
        return [block_name for block_name, _ in self._blocks()]

    def default_first_block(self) -> str:
        """The last two blocks of the penultimate stage, then the last stage."""
        stages = self.model.stages
        if len(stages) < 2:
            return self.block_names()[0]
        penultimate = len(stages) - 2
        return f"stages.{penultimate}.blocks.{max(0, len(stages[penultimate].blocks) - 2)}"

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        """The head's linear part: the pooled, normalised vector, the input of ``head.pre_logits``
        (the tf variants' Linear + tanh layer, which is left out of z)."""
        head = self.model.head
        return head.flatten(head.norm(head.global_pool(self.model.forward_features(images))))

    def _hook(self, hooks: HookScope, first: int, split_tokens: bool) -> _Captured:
        """Plan the landings when the stream enters the range; keep init, every block's pooled
        branches and the pooled stream."""
        blocks = self._blocks()[first:]
        captured = _Captured(blocks, [_BlockCapture() for _ in blocks])

        def plan_landings(stream: torch.Tensor) -> None:
            captured.grid = tuple(stream.shape[-2:])
            captured.landings.update(self._plan_landings(blocks, stream))
            captured.init = captured.landings["init"].pool(stream.permute(0, 2, 3, 1))

        hooks.on_input(blocks[0][1], plan_landings)
        hooks.keep_output(self.model.head.global_pool, captured, "pooled", lambda pooled: pooled.flatten(1))
        for (block_name, block), capture in zip(blocks, captured.captures):
            landings = captured.landings
            # drop_path (an identity in eval) outputs exactly the branch added to the shortcut.
            hooks.keep_output(block.conv.drop_path, capture, "conv",
                              lambda out, name=block_name: landings[name].pool(out.permute(0, 2, 3, 1)))
            for partition_name, partition in self._partitions(block):
                partition_capture = capture.partitions.setdefault(partition_name, _PartitionCapture())
                self._hook_partition(hooks, block_name, partition, partition_capture, landings, split_tokens)
        return captured

    def _compact(self, captured: _Captured, images: torch.Tensor) -> Compact:
        """Per head its A·V pooled over the queries with the landing's weights (head_dim), the
        conv and MLP branches and ``init`` pooled into the final channels (width), and the head
        norm's 1/σ of the pooled stream; the grid entering the range fixes the landings."""
        names, arrays = ["init"], {"init": StoredArray(captured.init, STREAM, ["init"])}
        for (block_name, block), capture in zip(captured.blocks, captured.captures):
            arrays[f"{block_name}.conv"] = StoredArray(capture.conv, STREAM, [f"{block_name}.conv"])
            names.append(f"{block_name}.conv")
            for partition_name, partition in self._partitions(block):
                partition_capture = capture.partitions[partition_name]
                prefix = f"{block_name}.{partition_name}"
                head_names = [f"{prefix}.attn.h{k}" for k in range(partition.attn.num_heads)]
                arrays[f"{prefix}.attn"] = StoredArray(partition_capture.heads, HEAD, head_names)
                arrays[f"{prefix}.mlp"] = StoredArray(partition_capture.mlp, STREAM, [f"{prefix}.mlp"])
                names += [*head_names, f"{prefix}.mlp"]
        arrays[HEAD_NORM_SCALE] = StoredArray(layer_norm_inverse_sigma(captured.pooled, self.model.head.norm), SCALAR)
        return [*names, "bias"], arrays, {"grid": list(captured.grid)}

    def _expand(self, stored: StoredComponents, captured: _Captured | None) -> torch.Tensor:
        if captured is not None:
            blocks, landings = captured.blocks, captured.landings
        else:
            blocks = self._blocks()[self.block_names().index(stored.first_block):]
            scalar = stored.arrays[HEAD_NORM_SCALE].data
            landings = self._plan_landings(blocks, scalar.new_zeros(1, 1, *stored.geometry["grid"]))
        parts = []
        for name, array in stored.arrays.items():
            if array.space == HEAD:
                block_name, partition_name, _ = name.rsplit(".", 2)
                attn = self.model.get_submodule(f"{block_name}.{partition_name}.attn")
                landing = landings[block_name]
                # b_O / H per head, times the landing's mass (Σ_q w_q: 1 for plain average pools).
                bias = attn.proj.bias * landing.mass if attn.proj.bias is not None else None
                heads = project_heads(array.data, attn.proj.weight, bias)
                parts.append(landing.to_final(self.model.get_submodule(f"{block_name}.{partition_name}").ls1(heads)))
            elif array.space == STREAM:
                parts.append(array.data.unsqueeze(1))
        # The downsampling biases join the stream (and its norm) as one more summand.
        parts.append(self._shortcut_biases(blocks, landings, stored.batch).unsqueeze(1))
        normalised, beta = frozen_layer_norm(torch.cat(parts, dim=1), stored.arrays[HEAD_NORM_SCALE].data,
                                             self.model.head.norm)
        return torch.cat([normalised[:, :-1], (normalised[:, -1] + beta).unsqueeze(1)], dim=1)

    def _token_splits(self, captured: _Captured, images: torch.Tensor) -> list[TokenSplit]:
        return [
            self._token_split(f"{block_name}.{partition_name}", partition, capture.partitions[partition_name],
                              captured.landings[block_name], captured.pooled)
            for (block_name, block), capture in zip(captured.blocks, captured.captures)
            for partition_name, partition in self._partitions(block)
        ]

    @staticmethod
    def _plan_landings(blocks: list[tuple[str, MaxxVitBlock]], stream: torch.Tensor) -> dict[str, _Landing]:
        """Landings for ``init`` (the first block's input) and every block's output grid."""
        sizes = [tuple(stream.shape[-2:])]  # sizes[k]: spatial size entering block k
        probe = stream.new_zeros(1, 1, *sizes[0])
        for _, block in blocks:
            shortcut = block.conv.shortcut
            if isinstance(shortcut, Downsample2d):
                probe = shortcut.pool(probe)
            sizes.append(tuple(probe.shape[-2:]))
        weights = stream.new_full((1, *sizes[-1]), 1.0 / (sizes[-1][0] * sizes[-1][1]))
        channels: torch.Tensor | None = None
        landings: dict[str, _Landing] = {}
        for index in reversed(range(len(blocks))):
            block_name, block = blocks[index]
            landings[block_name] = _Landing(weights, channels)
            shortcut = block.conv.shortcut
            if isinstance(shortcut, Downsample2d):
                weights = _pool_adjoint(shortcut.pool, weights, sizes[index])
                if isinstance(shortcut.expand, nn.Conv2d):
                    expand = shortcut.expand.weight.flatten(1)  # (C_out, C_in): a 1×1 conv
                    channels = expand if channels is None else channels @ expand
        landings["init"] = _Landing(weights, channels)
        return landings

    def _shortcut_biases(
        self, blocks: list[tuple[str, MaxxVitBlock]], landings: dict[str, _Landing], batch: int
    ) -> torch.Tensor:
        """The downsampling 1×1 convs' biases, pooled and carried to the final space: (B, C)."""
        total = landings["init"].weights.new_zeros(self.model.head.norm.weight.shape[0])
        for block_name, block in blocks:
            expand = getattr(block.conv.shortcut, "expand", None)
            if isinstance(expand, nn.Conv2d) and expand.bias is not None:
                landing = landings[block_name]
                total = total + landing.to_final(expand.bias * landing.mass)
        return total.expand(batch, -1)

    def _hook_partition(
        self,
        hooks: HookScope,
        block_name: str,
        partition: PartitionAttentionCl,
        capture: _PartitionCapture,
        landings: dict[str, _Landing],
        split_tokens: bool,
    ) -> None:
        attn = partition.attn

        def spatial_weights(batch: int) -> torch.Tensor:
            """The landing's weights cut into the partitions attention sees: (B·windows, tokens)."""
            weights = landings[block_name].weights.expand(batch, -1, -1).unsqueeze(-1)
            return _partition(partition, weights).flatten(1)

        def keep_heads(windows: torch.Tensor) -> None:
            # Input of proj: per-head A·V, concatenated head-major, one row per query.
            batch = windows.shape[0] // _windows_per_image(partition, landings[block_name])
            per_head = torch.einsum("wnd,wn->wd", windows.flatten(1, 2), spatial_weights(batch))
            capture.heads = per_head.view(batch, -1, attn.num_heads, attn.dim_head).sum(1)
            if split_tokens:
                capture.tokens = _split_by_key(partition, capture, windows.shape, landings[block_name])
                capture.attention = capture.values = None

        hooks.on_input(attn.proj, keep_heads)
        # drop_path2 (an identity in eval) outputs ls2(mlp(·)), the branch added to the stream.
        hooks.keep_output(partition.drop_path2, capture, "mlp", lambda out: landings[block_name].pool(out))
        if not split_tokens:
            return

        def pooled_attention(attention: torch.Tensor) -> torch.Tensor:
            """A (B·windows, heads, queries, keys), softmaxed → weighted over queries (B·windows, heads, keys)."""
            batch = attention.shape[0] // _windows_per_image(partition, landings[block_name])
            return torch.einsum("whqk,wq->whk", attention, spatial_weights(batch))

        def values(qkv: torch.Tensor) -> torch.Tensor:
            qkv = qkv.flatten(1, 2)  # (B·windows, tokens, 3·heads·head_dim)
            if attn.head_first:  # per head: q, k, v of head_dim each
                return qkv.unflatten(-1, (attn.num_heads, 3, attn.dim_head))[..., 2, :]
            return qkv.unflatten(-1, (3, attn.num_heads, attn.dim_head))[..., 2, :, :]  # q of all heads, k, v

        # The explicit path hands the softmaxed A to attn_drop.
        hooks.materialise_attention(attn)
        hooks.keep_input(attn.attn_drop, capture, "attention", pooled_attention)
        hooks.keep_output(attn.qkv, capture, "values", values)

    def _token_split(
        self,
        partition_name: str,
        partition: PartitionAttentionCl,
        capture: _PartitionCapture,
        landing: _Landing,
        pooled_stream: torch.Tensor,
    ) -> TokenSplit:
        tokens = landing.to_final(partition.ls1(capture.tokens))  # (B, heads, H·W, C)
        batch, heads, count, dim = tokens.shape
        normalised, _ = linearised_layer_norm(tokens.reshape(batch, heads * count, dim), pooled_stream,
                                              self.model.head.norm)
        return TokenSplit(
            block=partition_name,
            component_names=[f"{partition_name}.attn.h{k}" for k in range(heads)],
            contributions=normalised.reshape(batch, heads, count, dim),
            grid=tuple(landing.weights.shape[-2:]),
        )


def _pool_adjoint(pool: nn.Module, weights: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """Spatial weights on ``pool``'s input giving the same weighted sum as ``weights`` on its output.

    The adjoint of a linear pool, as one vector-Jacobian product of the pool alone on a
    one-channel probe (never the model); runs once per decomposition, O(H·W).
    """
    with torch.inference_mode(False), torch.enable_grad():
        probe = torch.zeros(1, 1, *input_size, dtype=weights.dtype, device=weights.device, requires_grad=True)
        (adjoint,) = torch.autograd.grad(pool(probe), probe, grad_outputs=weights.clone().unsqueeze(1))
    return adjoint.squeeze(1)


def _partition(partition: PartitionAttentionCl, channels_last: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) → (B·windows, h, w, C), as the attention block cuts its input."""
    cut = window_partition if partition.partition_block else grid_partition
    return cut(channels_last, partition.partition_size)


def _windows_per_image(partition: PartitionAttentionCl, landing: _Landing) -> int:
    height, width = landing.weights.shape[-2:]
    return height * width // (partition.partition_size[0] * partition.partition_size[1])


def _split_by_key(
    partition: PartitionAttentionCl,
    capture: _PartitionCapture,
    windows_shape: torch.Size,
    landing: _Landing,
) -> torch.Tensor:
    """Heads split by key token, tokens in row-major order of the feature map.

    Returns (B, heads, H·W, C), before LayerScale and the channel landing (the caller applies those).
    """
    attn = partition.attn
    _, per_token = head_contributions(
        capture.attention, capture.values, attn.proj.weight, attn.proj.bias, split_tokens=True
    )  # (B·windows, heads, keys, C)
    height, width = landing.weights.shape[-2:]
    windowed = per_token.permute(0, 2, 1, 3).reshape(*windows_shape[:3], -1)
    reverse = window_reverse if partition.partition_block else grid_reverse
    spatial = reverse(windowed, partition.partition_size, (height, width))  # (B, H, W, heads·C)
    return spatial.flatten(1, 2).unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)
