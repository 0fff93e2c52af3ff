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

from contextlib import ExitStack
from dataclasses import dataclass

import torch
from timm.layers import LayerScale
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from mapping.decompose.base import (
    Decomposition,
    TimmPreLogitsAdapter,
    TokenSplit,
    head_contributions,
    linearised_layer_norm,
    project_heads,
    register_adapter,
)
from mapping.errors import UnsupportedModelError

# Last five blocks: the paper's default range for its 12-block ViTs (blocks 7–11).
DEFAULT_DECOMPOSED_BLOCKS = 5


@dataclass
class _BlockCapture:
    """What the hooks keep from one decomposed block; queries are pooled as they arrive."""

    head_outputs: torch.Tensor | None = None  # (batch, attn_dim): pooled input of attn.proj
    mlp: torch.Tensor | None = None  # (batch, dim): pooled ls2(mlp(·)) branch
    attention: torch.Tensor | None = None  # (batch, heads, keys): pooled query rows of A
    values: torch.Tensor | None = None  # (batch, keys, heads, head_dim), token split only


@register_adapter
class VitAdapter(TimmPreLogitsAdapter):
    module_classes = (VisionTransformer,)

    def __init__(self, model: nn.Module, model_name: str) -> None:
        super().__init__(model, model_name)
        self._check_supported()
        if model.global_pool == "token":
            self._pool_start, self._pool_stop = 0, 1
        else:  # 'avg': the mean of the spatial tokens (or of all, when the model says so)
            self._pool_start = 0 if getattr(model, "pool_include_prefix", False) else model.num_prefix_tokens
            self._pool_stop = None
        # Exactly one of the two is a LayerNorm (or neither, without a final norm); for
        # token pooling, normalising the class token before or after pooling is the same.
        self._final_norm = model.fc_norm if not isinstance(model.fc_norm, nn.Identity) else model.norm

    def _check_supported(self) -> None:
        model, name = self.model, self.model_name

        def unsupported(what: str) -> UnsupportedModelError:
            return UnsupportedModelError(
                f"{name}: {what}, which the plain-ViT decomposition does not handle",
                "use a standard timm VisionTransformer (pre-norm Blocks, 'token' or 'avg' "
                "pooling), e.g. deit_*, vit_*.dino, vit_*_dinov2, vit_*_reg4_dinov2",
            )

        if type(model) is not VisionTransformer:
            raise unsupported(f"{type(model).__name__} has its own pooling head")
        if model.attn_pool is not None or model.global_pool not in ("token", "avg"):
            raise unsupported(f"global_pool={model.global_pool!r}")
        if model.global_pool == "avg" and not isinstance(model.norm, nn.Identity):
            raise unsupported("a per-token final norm before mean pooling")
        for norm in (model.norm, model.fc_norm):
            if not isinstance(norm, (nn.LayerNorm, nn.Identity)):
                raise unsupported(f"a {type(norm).__name__} final norm")
        for index, block in enumerate(model.blocks):
            if type(block) is not Block:
                raise unsupported(f"blocks.{index} is a {type(block).__name__}")
            attn = block.attn
            if type(attn) is not Attention:
                raise unsupported(f"blocks.{index}.attn is a {type(attn).__name__}")
            # A norm or a gate between A·V and proj would mix the heads nonlinearly.
            if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
                raise unsupported(f"blocks.{index}.attn normalises or gates the heads before proj")
            for scale in (block.ls1, block.ls2):
                if not isinstance(scale, (LayerScale, nn.Identity)):
                    raise unsupported(f"blocks.{index} scales a branch with {type(scale).__name__}")

    def block_names(self) -> list[str]:
        return [f"blocks.{index}" for index in range(len(self.model.blocks))]

    def default_first_block(self) -> str:
        names = self.block_names()
        return names[max(0, len(names) - DEFAULT_DECOMPOSED_BLOCKS)]

    def _pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The model's pooling over the sequence axis (dim 1), kept linear."""
        return tokens[:, self._pool_start:self._pool_stop].mean(1)

    def decompose(
        self, images: torch.Tensor, first_block: str, split_tokens: bool
    ) -> Decomposition:
        self.require_eval_mode("dropout, stochastic depth")
        first = self.block_names().index(first_block)
        blocks = list(self.model.blocks)[first:]
        captures = [_BlockCapture() for _ in blocks]
        streams: dict[str, torch.Tensor] = {}
        with torch.inference_mode(), ExitStack() as stack:
            self._hook_streams(stack, blocks[0], streams)
            for block, capture in zip(blocks, captures):
                self._hook_block(stack, block, capture, split_tokens)
            z = self._forward(images)

        names, parts = ["init"], [streams["init"].unsqueeze(1)]
        token_splits: list[TokenSplit] | None = [] if split_tokens else None
        for index, (block, capture) in enumerate(zip(blocks, captures), start=first):
            block_name = f"blocks.{index}"
            head_names = [f"{block_name}.attn.h{head}" for head in range(block.attn.num_heads)]
            out_weight, out_bias = self._scaled_output_projection(block)
            mixed = capture.head_outputs.unflatten(-1, (block.attn.num_heads, block.attn.head_dim))
            parts += [project_heads(mixed, out_weight, out_bias), capture.mlp.unsqueeze(1)]
            names += [*head_names, f"{block_name}.mlp"]
            if token_splits is not None:
                _, per_token = head_contributions(
                    capture.attention, capture.values, out_weight, out_bias, split_tokens=True
                )
                token_splits.append(self._token_split(block_name, head_names, images, per_token, streams["final"]))
        components, beta = self._normalise(torch.cat(parts, dim=1), streams["final"])
        names.append("bias")
        contributions = torch.cat([components, beta.unsqueeze(1)], dim=1)
        return Decomposition(self.model_name, names, contributions, z, token_splits)

    def _hook_streams(self, stack: ExitStack, first_block: nn.Module, streams: dict[str, torch.Tensor]) -> None:
        """Capture the pooled stream entering the first decomposed block and leaving the last."""

        def keep_init(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            streams["init"] = self._pool(args[0])

        def keep_final(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            streams["final"] = self._pool(output)

        stack.callback(first_block.register_forward_pre_hook(keep_init).remove)
        stack.callback(self.model.blocks.register_forward_hook(keep_final).remove)

    def _hook_block(self, stack: ExitStack, block: Block, capture: _BlockCapture, split_tokens: bool) -> None:
        attn = block.attn

        def keep_head_outputs(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            capture.head_outputs = self._pool(args[0])

        def keep_mlp(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            capture.mlp = self._pool(output)

        stack.callback(attn.proj.register_forward_pre_hook(keep_head_outputs).remove)
        stack.callback(block.ls2.register_forward_hook(keep_mlp).remove)
        if not split_tokens:
            return

        def keep_attention(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            # args[0] is the softmaxed A (batch, heads, queries, keys); pool its query rows.
            capture.attention = args[0][:, :, self._pool_start:self._pool_stop].mean(2)

        def keep_values(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            capture.values = output.unflatten(-1, (3, attn.num_heads, attn.head_dim))[:, :, 2]

        # The fused kernel never materialises A; the explicit path hands it to attn_drop.
        stack.callback(setattr, attn, "fused_attn", attn.fused_attn)
        attn.fused_attn = False
        stack.callback(attn.attn_drop.register_forward_pre_hook(keep_attention).remove)
        stack.callback(attn.qkv.register_forward_hook(keep_values).remove)

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
