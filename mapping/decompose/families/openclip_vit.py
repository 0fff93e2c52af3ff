"""RepDecompose for open_clip CLIP models with a ViT image tower.

The model is the whole open_clip ``CLIP`` / ``CustomTextCLIP``; the decomposed output is
``z = model.encode_image(x, normalize=True)``, the normalised image embedding:

    z = proj(ln_post(x_L)[CLS]) / ‖proj(ln_post(x_L)[CLS])‖

Block names are module paths relative to the CLIP model, ``visual.transformer.resblocks.{i}``;
components are ``init``, then per decomposed block ``visual.transformer.resblocks.{i}.attn.h{h}``
and ``visual.transformer.resblocks.{i}.mlp``, and ``bias`` (ln_post's β through ``proj``).
The default range is the last five blocks. ln_post is linearised with the image's own
statistics, then ``proj`` and the division by the image's (frozen) ‖proj(…)‖ are applied to
every component, so Σ components == z.

``nn.MultiheadAttention`` computes its output projection inside a fused kernel, so hooks on
``out_proj`` never fire: heads are recomputed from the attention input u (captured by a
forward pre-hook) with the module's own ``in_proj`` / ``out_proj`` parameters. Only the CLS
row reaches z, so only the CLS query is projected, and W_K, W_V are folded onto it rather
than applied to every token (see :func:`_cls_attention`, :func:`_cls_mixed_values`): the
head split costs O(batch·heads·tokens·width) per block on top of the forward.
``CustomResidualAttentionBlock`` (qk_norm, head scales) is handled the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import (
    Attention,
    CustomResidualAttentionBlock,
    ResidualAttentionBlock,
    VisionTransformer,
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

BLOCKS = "visual.transformer.resblocks"
DEFAULT_DECOMPOSED_BLOCKS = 5  # the paper's range for 12-block ViTs: blocks 7–11
CLS = 0  # 'tok' pooling reads the class token, the first token
# The stored scalars: ln_post's 1/σ at CLS, and ‖proj(ln_post(x)[CLS])‖ that z is divided by.
LN_POST_SCALE = "visual.ln_post.inverse_sigma"
EMBEDDING_NORM = "embedding_norm"


@dataclass
class _BlockCapture:
    """What one decomposed block's hooks keep, all at the CLS position unless noted."""

    mixed: torch.Tensor | None = None  # (batch, heads, head_dim): Σ_t A_t v_t, before out_proj
    mlp: torch.Tensor | None = None  # (batch, width), LayerScale applied
    attention: torch.Tensor | None = None  # (batch, heads, tokens), only for the token split
    attention_input: torch.Tensor | None = None  # (batch, tokens, width), idem


@dataclass
class _TowerCapture:
    """What the tower-level hooks keep, and the blocks' captures by block index."""

    blocks: dict[int, _BlockCapture]
    init: torch.Tensor | None = None  # (batch, width): the stream entering the first block, at CLS
    stream: torch.Tensor | None = None  # (batch, width): ln_post's input at CLS
    features: torch.Tensor | None = None  # (batch, embed_dim): the embedding before /‖·‖


@register_adapter
class OpenClipViTAdapter(Adapter[_TowerCapture]):
    """Decomposes ``encode_image`` of open_clip CLIP models whose tower is a VisionTransformer."""

    module_classes = (CLIP, CustomTextCLIP)
    family = "open_clip ViT"
    supported_hint = "use a CLIP model with a ViT image tower and class-token pooling (pool_type='tok')"
    training_randomness = "patch dropout, attention dropout"

    @property
    def visual(self) -> VisionTransformer:
        return self.model.visual

    def _check_supported(self) -> None:
        """The image tower must be a ViT pooled by its class token (blocks are checked per range)."""
        visual = self.visual
        if not isinstance(visual, VisionTransformer):
            raise self.unsupported(
                f"an image tower of type {type(visual).__name__}, not an open_clip VisionTransformer",
                "only CLIP models with a ViT image tower can be decomposed",
            )
        if visual.attn_pool is not None:
            raise self.unsupported(
                "an attentional pooler over the image tokens, whose output is not a sum of per-component terms"
            )
        if visual.pool_type != "tok":
            raise self.unsupported(f"pool_type={visual.pool_type!r}",
                                   "only class-token pooling (pool_type='tok') is supported")

    def block_names(self) -> list[str]:
        return [f"{BLOCKS}.{i}" for i in range(len(self.visual.transformer.resblocks))]

    def default_first_block(self) -> str:
        names = self.block_names()
        return names[max(len(names) - DEFAULT_DECOMPOSED_BLOCKS, 0)]

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images, normalize=True)

    def _hook(self, hooks: HookScope, first: int, split_tokens: bool) -> _TowerCapture:
        """Hooks on one plain ``encode_image`` pass that keep what the split needs."""
        blocks = {i: block for i, block in enumerate(self.visual.transformer.resblocks) if i >= first}
        for i, block in blocks.items():
            self._check_block(block, f"{BLOCKS}.{i}")
        tower = _TowerCapture({i: _BlockCapture() for i in blocks})
        batch_first = getattr(self.visual.transformer, "batch_first", True)

        def at_cls(tokens: torch.Tensor) -> torch.Tensor:
            return _tokens_first(tokens, batch_first)[:, CLS].clone()

        hooks.keep_input(blocks[first], tower, "init", at_cls)
        # ln_post's input is 3-d when it runs before pooling, already the pooled row otherwise.
        hooks.keep_input(self.visual.ln_post, tower, "stream", lambda s: s[:, CLS] if s.ndim == 3 else s)
        hooks.keep_output(self.visual, tower, "features")
        for i, block in blocks.items():
            capture = tower.blocks[i]
            hooks.on_input(block.attn, partial(_capture_heads, block, capture, batch_first, split_tokens))
            # ls_2's output is exactly the MLP branch that is added to the stream.
            hooks.keep_output(block.ls_2, capture, "mlp", at_cls)
        return tower

    def _compact(self, tower: _TowerCapture, images: torch.Tensor) -> Compact:
        """Per head its CLS A·V (head_dim), the MLP branches and ``init`` at CLS (width), and
        the two scalars after them: ln_post's 1/σ and the embedding's norm."""
        names, arrays = ["init"], {"init": StoredArray(tower.init, STREAM, ["init"])}
        for i, capture in tower.blocks.items():
            head_names = [f"{BLOCKS}.{i}.attn.h{h}" for h in range(capture.mixed.shape[1])]
            arrays[f"{BLOCKS}.{i}.attn"] = StoredArray(capture.mixed, HEAD, head_names)
            arrays[f"{BLOCKS}.{i}.mlp"] = StoredArray(capture.mlp, STREAM, [f"{BLOCKS}.{i}.mlp"])
            names += [*head_names, f"{BLOCKS}.{i}.mlp"]
        arrays[LN_POST_SCALE] = StoredArray(layer_norm_inverse_sigma(tower.stream, self.visual.ln_post), SCALAR)
        arrays[EMBEDDING_NORM] = StoredArray(_embedding_norm(tower.features).unsqueeze(-1), SCALAR)
        return [*names, "bias"], arrays, {}

    def _expand(self, stored: StoredComponents, tower: _TowerCapture | None) -> torch.Tensor:
        parts = []
        for name, array in stored.arrays.items():
            if array.space == HEAD:
                block = self.model.get_submodule(name.removesuffix(".attn"))
                attn = block.attn
                parts.append(block.ls_1(project_heads(array.data, attn.out_proj.weight, attn.out_proj.bias)))
            elif array.space == STREAM:
                parts.append(array.data.unsqueeze(1))
        normalised, beta = frozen_layer_norm(torch.cat(parts, 1), stored.arrays[LN_POST_SCALE].data,
                                             self.visual.ln_post)
        return self._project(torch.cat([normalised, beta.unsqueeze(1)], 1), stored.arrays[EMBEDDING_NORM].data[:, 0])

    def _token_splits(self, tower: _TowerCapture, images: torch.Tensor) -> list[TokenSplit]:
        resblocks = self.visual.transformer.resblocks
        norm = _embedding_norm(tower.features)
        return [
            self._token_split(resblocks[i], f"{BLOCKS}.{i}", capture, tower.stream, norm)
            for i, capture in tower.blocks.items()
        ]

    def _check_block(self, block: nn.Module, name: str) -> None:
        if not _splits_per_head(block):
            raise self.unsupported(
                f"block {name} ({type(block).__name__}) mixing its heads (cross-attention, a norm "
                "after attention, or scaled cosine attention)",
                "decompose from a later block, or use a model without scale_attn / "
                "scale_attn_inner / scaled_cosine_attn",
            )

    def _project(self, components: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        """Apply what follows ln_post, linear for a frozen ‖·‖: ``@ proj``, then ``/ norm``."""
        if self.visual.proj is not None:
            components = components @ self.visual.proj
        return components / norm.view(-1, *[1] * (components.ndim - 1))

    def _token_split(
        self,
        block: nn.Module,
        name: str,
        capture: _BlockCapture,
        stream: torch.Tensor,
        norm: torch.Tensor,
    ) -> TokenSplit:
        values = _values(block.attn, capture.attention_input)
        _, per_token = head_contributions(
            capture.attention, values, block.attn.out_proj.weight, block.attn.out_proj.bias, True
        )
        # A (batch, 1, width) stream broadcasts ln_post's σ over the (heads, tokens) axes.
        normalised, _ = linearised_layer_norm(
            block.ls_1(per_token), stream.unsqueeze(1), self.visual.ln_post
        )
        heads = per_token.shape[1]
        return TokenSplit(
            block=name,
            component_names=[f"{name}.attn.h{h}" for h in range(heads)],
            contributions=self._project(normalised, norm),
            grid=tuple(self.visual.grid_size),
            num_prefix_tokens=1,
        )


def _splits_per_head(block: nn.Module) -> bool:
    attn = block.attn
    if isinstance(block, ResidualAttentionBlock) and isinstance(attn, nn.MultiheadAttention):
        return attn._qkv_same_embed_dim and not hasattr(block, "ln_1_kv")
    if isinstance(block, CustomResidualAttentionBlock) and isinstance(attn, Attention):
        # A norm across all heads' outputs (scale_attn, scale_attn_inner) does not split by
        # head; scaled cosine attention does not run in open_clip 3.x (4-d bmm), so is untested.
        norms = (block.ln_attn, attn.ln_inner)
        return all(isinstance(norm, nn.Identity) for norm in norms) and attn.logit_scale is None
    return False


def _capture_heads(
    block: nn.Module, capture: _BlockCapture, batch_first: bool, split_tokens: bool, attention_input: torch.Tensor
) -> None:
    """Fill ``capture.mixed`` (and the token split's inputs) from the block's attention input."""
    attn = block.attn
    attention_input = _tokens_first(attention_input, batch_first)
    attention = _cls_attention(attn, attention_input)
    capture.mixed = _cls_mixed_values(attn, attention, attention_input)
    if split_tokens:
        capture.attention, capture.attention_input = attention, attention_input


def _cls_attention(attn: nn.Module, attention_input: torch.Tensor) -> torch.Tensor:
    """The CLS query's attention weights (batch, heads, tokens), recomputed from the
    attention input (batch, tokens, width) with the module's own parameters."""
    weight, bias = _per_head_in_proj(attn)
    query = torch.einsum("bD,hdD->bhd", attention_input[:, CLS], weight[0]) + bias[0]
    if isinstance(attn, Attention) and not isinstance(attn.ln_k, nn.Identity):
        # qk_norm normalises every key, so the keys themselves are needed.
        key = attn.ln_k(torch.einsum("btD,hdD->bthd", attention_input, weight[1]) + bias[1])
        logits = torch.einsum("bhd,bthd->bht", attn.ln_q(query), key)
    else:
        # q·(W_k u_t + b_k) = (W_kᵀ q)·u_t + q·b_k, and softmax drops q·b_k, the same for every
        # token: projecting the one CLS query replaces projecting every token's key.
        query_in_input = torch.einsum("bhd,hdD->bhD", query, weight[1])
        logits = torch.einsum("bhD,btD->bht", query_in_input, attention_input)
    return (logits * query.shape[-1] ** -0.5).softmax(-1)


def _cls_mixed_values(
    attn: nn.Module, attention: torch.Tensor, attention_input: torch.Tensor
) -> torch.Tensor:
    """Σ_t A_t v_t per head (batch, heads, head_dim), as W_V^h (Σ_t A_t u_t) + b_V^h (the
    weights sum to one): no token's value is projected."""
    weight, bias = _per_head_in_proj(attn)
    mixed_input = torch.einsum("bht,btD->bhD", attention, attention_input)
    mixed = torch.einsum("bhD,hdD->bhd", mixed_input, weight[2]) + bias[2]
    return mixed * _head_scale(attn)


def _values(attn: nn.Module, attention_input: torch.Tensor) -> torch.Tensor:
    """Every token's values (batch, tokens, heads, head_dim), for the token split."""
    weight, bias = _per_head_in_proj(attn)
    values = torch.einsum("btD,hdD->bthd", attention_input, weight[2]) + bias[2]
    return values * _head_scale(attn)


def _per_head_in_proj(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``in_proj`` as weights (q/k/v, heads, head_dim, width) and biases (q/k/v, heads, head_dim)."""
    weight = attn.in_proj_weight.unflatten(0, (3, attn.num_heads, -1))
    bias = attn.in_proj_bias
    if bias is None:
        bias = weight.new_zeros(weight.shape[:-1].numel())
    return weight, bias.unflatten(0, weight.shape[:-1])


def _head_scale(attn: nn.Module) -> torch.Tensor | float:
    """open_clip's per-head output scale (scale_heads), as a (heads, 1) factor."""
    head_scale = getattr(attn, "head_scale", None)
    return 1.0 if head_scale is None else head_scale.view(-1, 1)


def _tokens_first(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """(batch, tokens, width) whatever layout the transformer runs in."""
    return x if batch_first else x.transpose(0, 1)


def _embedding_norm(features: torch.Tensor) -> torch.Tensor:
    """‖features‖ as ``F.normalize`` divides by it (same eps floor)."""
    return features.norm(dim=-1).clamp_min(1e-12)
