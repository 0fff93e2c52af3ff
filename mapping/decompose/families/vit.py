"""RepDecompose for timm's plain ViTs: DeiT, DINO, DINOv2 and register-token ViTs.

Handles ``timm.models.vision_transformer.VisionTransformer`` built from the standard
pre-norm ``Block`` (``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``) and pooled
by the class token (``'token'``) or by the mean of the tokens (``'avg'``, then ``fc_norm``).

Everything comes from one forward pass with hooks. Pooling (a mean over a fixed token
range) is linear, so every branch is pooled as soon as it is produced, and the attention
heads are split after pooling: the input of ``attn.proj`` is the concatenation of the
per-head outputs A·V, so one einsum with the per-head column blocks of ``proj.weight``
gives all heads of a block, and the fast fused attention stays on. Only the token split
needs A itself, which the fused kernel never materialises.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import LayerScale
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from compsearch.mapping.decompose.base import (
    Compact,
    HookScope,
    TimmPreLogitsAdapter,
    TokenSplit,
    frozen_layer_norm,
    head_contributions,
    layer_norm_inverse_sigma,
    linearised_layer_norm,
    project_heads,
    register_adapter,
)
from compsearch.mapping.decompose.store import HEAD, SCALAR, STREAM, StoredArray, StoredComponents

# Last five blocks: the paper's default range for its 12-block ViTs (blocks 7–11).
DEFAULT_DECOMPOSED_BLOCKS = 5
FINAL_SCALE = "final_norm.inverse_sigma"  # the stored scalar: 1/σ of the pooled stream


@dataclass
class _BlockCapture:
    """What the hooks keep from one decomposed block; queries are pooled as they arrive."""

    head_outputs: torch.Tensor | None = None  # (batch, attn_dim): pooled input of attn.proj
    mlp: torch.Tensor | None = None  # (batch, dim): pooled ls2(mlp(·)) branch
    attention: torch.Tensor | None = None  # (batch, heads, keys): pooled query rows of A
    values: torch.Tensor | None = None  # (batch, keys, heads, head_dim), token split only


@dataclass
class _Captured:
    first: int  # index of the first decomposed block
    blocks: list[_BlockCapture]
    init: torch.Tensor | None = None  # (batch, dim): pooled stream entering the first block
    final: torch.Tensor | None = None  # (batch, dim): pooled stream leaving the last block


@register_adapter
class VitAdapter(TimmPreLogitsAdapter[_Captured]):
    module_classes = (VisionTransformer,)
    family = "plain-ViT"
    supported_hint = (
        "use a standard timm VisionTransformer (pre-norm Blocks, 'token' or 'avg' "
        "pooling), e.g. deit_*, vit_*.dino, vit_*_dinov2, vit_*_reg4_dinov2"
    )

    def _check_supported(self) -> None:
        model = self.model
        if type(model) is not VisionTransformer:
            raise self.unsupported(f"{type(model).__name__} has its own pooling head")
        if model.attn_pool is not None or model.global_pool not in ("token", "avg"):
            raise self.unsupported(f"global_pool={model.global_pool!r}")
        if model.global_pool == "avg" and not isinstance(model.norm, nn.Identity):
            raise self.unsupported("a per-token final norm before mean pooling")
        for norm in (model.norm, model.fc_norm):
            if not isinstance(norm, (nn.LayerNorm, nn.Identity)):
                raise self.unsupported(f"a {type(norm).__name__} final norm")
        for index, block in enumerate(model.blocks):
            if type(block) is not Block:
                raise self.unsupported(f"blocks.{index} is a {type(block).__name__}")
            attn = block.attn
            if type(attn) is not Attention:
                raise self.unsupported(f"blocks.{index}.attn is a {type(attn).__name__}")
            # A norm or a gate between A·V and proj would mix the heads nonlinearly.
            if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
                raise self.unsupported(f"blocks.{index}.attn normalises or gates the heads before proj")
            for scale in (block.ls1, block.ls2):
                if not isinstance(scale, (LayerScale, nn.Identity)):
                    raise self.unsupported(f"blocks.{index} scales a branch with {type(scale).__name__}")

    def block_names(self) -> list[str]:
        return [f"blocks.{index}" for index in range(len(self.model.blocks))]

    def default_first_block(self) -> str:
        names = self.block_names()
        return names[max(0, len(names) - DEFAULT_DECOMPOSED_BLOCKS)]

    @property
    def _pooled_tokens(self) -> slice:
        """The tokens the model's pooling averages: the class token, or the spatial tokens
        (all of them, when the model says so)."""
        model = self.model
        if model.global_pool == "token":
            return slice(0, 1)
        return slice(0 if getattr(model, "pool_include_prefix", False) else model.num_prefix_tokens, None)

    @property
    def _final_norm(self) -> nn.Module:
        # Exactly one of the two is a LayerNorm (or neither, without a final norm); for
        # token pooling, normalising the class token before or after pooling is the same.
        model = self.model
        return model.fc_norm if not isinstance(model.fc_norm, nn.Identity) else model.norm

    def _pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The model's pooling over the sequence axis (dim 1), kept linear."""
        return tokens[:, self._pooled_tokens].mean(1)

    def _hook(self, hooks: HookScope, first: int, split_tokens: bool) -> _Captured:
        blocks = list(self.model.blocks)[first:]
        captured = _Captured(first, [_BlockCapture() for _ in blocks])
        hooks.keep_input(blocks[0], captured, "init", self._pool)
        hooks.keep_output(self.model.blocks, captured, "final", self._pool)
        for block, capture in zip(blocks, captured.blocks):
            attn = block.attn
            hooks.keep_input(attn.proj, capture, "head_outputs", self._pool)
            hooks.keep_output(block.ls2, capture, "mlp", self._pool)
            if split_tokens:
                # The explicit path hands the softmaxed A (batch, heads, queries, keys) to attn_drop.
                hooks.materialise_attention(attn)
                hooks.keep_input(attn.attn_drop, capture, "attention",
                                 lambda a: a[:, :, self._pooled_tokens].mean(2))
                hooks.keep_output(attn.qkv, capture, "values",
                                  lambda qkv, attn=attn: qkv.unflatten(-1, (3, attn.num_heads, attn.head_dim))[:, :, 2])
        return captured

    def _compact(self, captured: _Captured, images: torch.Tensor) -> Compact:
        """Per head its pooled A·V (head_dim), the pooled MLP branches and ``init`` (width), and
        the final norm's 1/σ of the pooled stream: everything after them is fixed and linear."""
        names, arrays = ["init"], {"init": StoredArray(captured.init, STREAM, ["init"])}
        blocks = list(self.model.blocks)[captured.first:]
        for index, (block, capture) in enumerate(zip(blocks, captured.blocks), start=captured.first):
            block_name = f"blocks.{index}"
            head_names = [f"{block_name}.attn.h{head}" for head in range(block.attn.num_heads)]
            mixed = capture.head_outputs.unflatten(-1, (block.attn.num_heads, block.attn.head_dim))
            arrays[f"{block_name}.attn"] = StoredArray(mixed, HEAD, head_names)
            arrays[f"{block_name}.mlp"] = StoredArray(capture.mlp, STREAM, [f"{block_name}.mlp"])
            names += [*head_names, f"{block_name}.mlp"]
        if not isinstance(self._final_norm, nn.Identity):
            inverse_sigma = layer_norm_inverse_sigma(captured.final, self._final_norm)
            arrays[FINAL_SCALE] = StoredArray(inverse_sigma, SCALAR)
        return [*names, "bias"], arrays, {}

    def _expand(self, stored: StoredComponents, captured: _Captured | None) -> torch.Tensor:
        parts = []
        for name, array in stored.arrays.items():
            if array.space == HEAD:
                block = self.model.get_submodule(name.removesuffix(".attn"))
                parts.append(project_heads(array.data, *self._scaled_output_projection(block)))
            elif array.space == STREAM:
                parts.append(array.data.unsqueeze(1))
        components = torch.cat(parts, dim=1)
        if isinstance(self._final_norm, nn.Identity):
            return torch.cat([components, components.new_zeros(len(components), 1, components.shape[-1])], dim=1)
        components, beta = frozen_layer_norm(components, stored.arrays[FINAL_SCALE].data, self._final_norm)
        return torch.cat([components, beta.unsqueeze(1)], dim=1)

    def _token_splits(self, captured: _Captured, images: torch.Tensor) -> list[TokenSplit]:
        splits = []
        blocks = list(self.model.blocks)[captured.first:]
        for index, (block, capture) in enumerate(zip(blocks, captured.blocks), start=captured.first):
            block_name = f"blocks.{index}"
            head_names = [f"{block_name}.attn.h{head}" for head in range(block.attn.num_heads)]
            _, per_token = head_contributions(
                capture.attention, capture.values, *self._scaled_output_projection(block), split_tokens=True
            )
            splits.append(self._token_split(block_name, head_names, images, per_token, captured.final))
        return splits

    @staticmethod
    def _scaled_output_projection(block: Block) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``attn.proj``'s weight and bias with the branch's LayerScale folded in (it is diagonal)."""
        weight, bias = block.attn.proj.weight, block.attn.proj.bias
        if isinstance(block.ls1, LayerScale):
            gamma = block.ls1.gamma
            weight = gamma.unsqueeze(1) * weight
            bias = gamma * bias if bias is not None else None
        return weight, bias

    def _normalise(self, components: torch.Tensor, stream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The final norm, linearised with the stream's own statistics: (components, β)."""
        if isinstance(self._final_norm, nn.Identity):
            return components, torch.zeros_like(stream)
        return linearised_layer_norm(components, stream, self._final_norm)

    def _token_split(
        self,
        block_name: str,
        head_names: list[str],
        images: torch.Tensor,
        per_token: torch.Tensor,
        stream: torch.Tensor,
    ) -> TokenSplit:
        """Carry a block's (batch, heads, tokens, dim) head split through the final norm."""
        batch, heads, tokens, dim = per_token.shape
        normalised, _ = self._normalise(per_token.reshape(batch, heads * tokens, dim), stream)
        patch_embed = self.model.patch_embed
        grid = (
            patch_embed.dynamic_feat_size(tuple(images.shape[-2:]))
            if self.model.dynamic_img_size
            else patch_embed.grid_size
        )
        return TokenSplit(
            block=block_name,
            component_names=head_names,
            contributions=normalised.reshape(batch, heads, tokens, dim),
            grid=tuple(grid),
            num_prefix_tokens=self.model.num_prefix_tokens,
        )
