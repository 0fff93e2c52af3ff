"""What a decomposition is, and the registry of per-family adapters that produce one.

An adapter wraps one architecture family's real timm / open_clip modules (no
re-implementation): it hooks the forward pass, and returns the model's own output ``z``
together with its exact split into named component contributions (DESIGN.md §3).

Conventions shared by every adapter:
- component names use absolute module paths: ``init``, ``blocks.9.attn.h7``,
  ``blocks.9.mlp``, ``layers.2.blocks.14.attn.h3``, ``bias``;
- ``init`` is the residual stream entering the first decomposed block;
- each attention head carries ``b_O / H`` of its block's output-projection bias, so the
  heads of a block sum exactly to that block's attention branch, and a head's token split
  spreads that share by the attention weights (which sum to one);
- ``bias`` holds every image-independent constant with no single owner: the β of
  linearised LayerNorms (final norm, Swin patch merging) and biases of linear maps applied
  after the decomposed range, all carried through the rest of the network;
- nonlinear normalisations after the decomposed range are linearised with the statistics
  of the image's own full stream (biased variance, the module's own eps), so
  Σ_i c_i equals the model output up to floating-point rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mapping.errors import CompsearchError, UnsupportedModelError


@dataclass
class TokenSplit:
    """The heads of one block split by the token they read from.

    ``contributions[:, j].sum(1)`` equals the component ``component_names[j]``.
    Tokens are ordered as the block sees them: ``num_prefix_tokens`` prefix tokens
    (CLS, registers) first, then the spatial tokens in row-major order of ``grid``.
    """

    block: str
    component_names: list[str]
    contributions: torch.Tensor  # (batch, heads, tokens, dim)
    grid: tuple[int, int]
    num_prefix_tokens: int = 0


@dataclass
class Decomposition:
    """A batch's representation split into named component contributions."""

    model_name: str
    names: list[str]
    contributions: torch.Tensor  # (batch, components, dim)
    output: torch.Tensor  # (batch, dim): the model's own output z
    token_splits: list[TokenSplit] | None = None

    def __post_init__(self) -> None:
        if self.contributions.shape[1] != len(self.names):
            raise ValueError(
                f"{len(self.names)} names for {self.contributions.shape[1]} components"
            )

    @property
    def reconstruction(self) -> torch.Tensor:
        """Σ_i c_i, computed in float64 so the check measures the split, not the sum."""
        return self.contributions.double().sum(1)

    def relative_error(self) -> torch.Tensor:
        """Per image ‖Σ_i c_i − z‖ / ‖z‖."""
        z = self.output.double()
        return (self.reconstruction - z).norm(dim=-1) / z.norm(dim=-1)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise CompsearchError(
                f"no component named {name!r} in this decomposition of {self.model_name}",
                "list the available names with `compsearch decompose IMAGE --model ...`",
            ) from None

    def component(self, name: str) -> torch.Tensor:
        """The (batch, dim) contribution of one named component."""
        return self.contributions[:, self.index(name)]


class Adapter:
    """Decomposes one architecture family. Subclasses register with :func:`register_adapter`.

    ``block_names`` lists the decomposable blocks in forward order (absolute names);
    ``default_first_block`` is the paper's default start of the decomposed range.
    """

    module_classes: ClassVar[tuple[type[nn.Module], ...]] = ()

    def __init__(self, model: nn.Module, model_name: str) -> None:
        self.model = model
        self.model_name = model_name

    def block_names(self) -> list[str]:
        raise NotImplementedError

    def default_first_block(self) -> str:
        raise NotImplementedError

    def output(self, images: torch.Tensor) -> torch.Tensor:
        """The model's own representation z (used as the reference for exactness)."""
        raise NotImplementedError

    def decompose(
        self, images: torch.Tensor, first_block: str, split_tokens: bool
    ) -> Decomposition:
        raise NotImplementedError

    def require_eval_mode(self, why: str) -> None:
        """Refuse a model in training mode, where ``why`` (dropout, …) makes its forward random."""
        if self.model.training:
            raise CompsearchError(f"{self.model_name} is in training mode ({why})",
                                  "call model.eval() before decomposing")

    def resolve_first_block(self, first_block: str | int | None) -> str:
        """Accepts a block name, an index into :meth:`block_names`, ``"all"`` or None."""
        names = self.block_names()
        if first_block is None:
            return self.default_first_block()
        if first_block == "all":
            return names[0]
        if isinstance(first_block, int) or (isinstance(first_block, str) and first_block.lstrip("-").isdigit()):
            position = int(first_block)
            if not -len(names) <= position < len(names):
                raise CompsearchError(
                    f"block index {position} is out of range for {self.model_name} "
                    f"({len(names)} decomposable blocks)",
                    f"pick an index in 0..{len(names) - 1} or a name such as {names[-1]!r}",
                )
            return names[position]
        if first_block not in names:
            raise CompsearchError(
                f"{first_block!r} is not a decomposable block of {self.model_name}",
                f"use one of {names[0]!r} … {names[-1]!r}, an index, or 'all'",
            )
        return first_block


class TimmPreLogitsAdapter(Adapter):
    """A timm model whose z is its pre-logits vector: ``forward_head(forward_features(x), pre_logits=True)``."""

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)

    def output(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self._forward(images)


_ADAPTERS: list[type[Adapter]] = []


def register_adapter(adapter: type[Adapter]) -> type[Adapter]:
    """Class decorator: make ``adapter`` handle models of its ``module_classes``."""
    _ADAPTERS.append(adapter)
    return adapter


def adapter_for(model: nn.Module, model_name: str) -> Adapter:
    """The adapter whose ``module_classes`` match ``model`` (most specific class first)."""
    for cls in type(model).__mro__:
        for adapter in _ADAPTERS:
            if cls in adapter.module_classes:
                return adapter(model, model_name)
    supported = sorted({c.__name__ for a in _ADAPTERS for c in a.module_classes})
    raise UnsupportedModelError(
        f"{model_name} is a {type(model).__name__}, which compsearch cannot decompose",
        f"supported architectures: {', '.join(supported)}",
    )


def layer_norm_inverse_sigma(stream: torch.Tensor, norm: nn.LayerNorm | nn.Module) -> torch.Tensor:
    """1/σ of ``norm`` over the last axis of ``stream`` (…, D), kept as (…, 1).

    Biased variance and the module's own eps, as LayerNorm itself computes it.
    """
    eps = getattr(norm, "eps", 1e-5)
    return torch.rsqrt(stream.var(dim=-1, unbiased=False, keepdim=True) + eps)


def linearised_layer_norm(
    components: torch.Tensor, stream: torch.Tensor, norm: nn.LayerNorm | nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``norm(stream)`` over ``components`` (…, C, D) that sum to ``stream`` (…, D).

    Returns ``(normalised_components, beta)`` with
    ``normalised_components.sum(-2) + beta == norm(stream)``: each component is centred
    and divided by the *stream's* σ (biased variance, the module's eps) and scaled by γ;
    β is returned apart so the caller can route it to the ``bias`` component.
    """
    inverse_sigma = layer_norm_inverse_sigma(stream, norm).unsqueeze(-2)
    centred = components - components.mean(dim=-1, keepdim=True)
    weight = norm.weight if getattr(norm, "weight", None) is not None else 1.0
    normalised = centred * inverse_sigma * weight
    beta = norm.bias if getattr(norm, "bias", None) is not None else torch.zeros(
        stream.shape[-1], dtype=stream.dtype, device=stream.device
    )
    return normalised, beta.expand_as(stream)



def project_heads(
    mixed: torch.Tensor, out_weight: torch.Tensor, out_bias: torch.Tensor | None
) -> torch.Tensor:
    """Heads (batch, heads, dim) from the per-head attention outputs ``mixed`` (batch, heads,
    head_dim): head h = W_O^h mixed_h + b_O / H.

    Where the output projection's input (the heads' A·V, concatenated) can be hooked at the
    pooled query, this is the whole head split: no attention weights are needed.
    """
    num_heads, head_dim = mixed.shape[-2:]
    per_head_out = out_weight.unflatten(1, (num_heads, head_dim))  # (dim, heads, head_dim)
    head_bias = out_bias / num_heads if out_bias is not None else 0.0
    return torch.einsum("bhd,ehd->bhe", mixed, per_head_out) + head_bias


def head_contributions(
    attention: torch.Tensor,
    values: torch.Tensor,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor | None,
    split_tokens: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each head's share of an attention block's output at the pooled query.

    ``attention`` (batch, heads, tokens): the pooled query's attention weights (or their
    mean over the pooled queries: the map is linear); ``values`` (batch, tokens, heads,
    head_dim); ``out_weight`` (dim, heads·head_dim) and ``out_bias`` the output projection.
    Returns ``heads`` (batch, heads, dim) with head h = W_O^h Σ_t A_t v_t + b_O / H, and with
    ``split_tokens`` also (batch, heads, tokens, dim) whose sum over tokens equals ``heads``
    (b_O / H is spread by the attention weights, which sum to one).
    """
    num_heads, head_dim = values.shape[-2:]
    per_head_out = out_weight.unflatten(1, (num_heads, head_dim))  # (dim, heads, head_dim)
    head_bias = out_bias / num_heads if out_bias is not None else 0.0
    mixed = torch.einsum("bht,bthd->bhd", attention, values)
    heads = project_heads(mixed, out_weight, out_bias)
    if not split_tokens:
        return heads, None
    per_token = torch.einsum("bthd,ehd->bhte", values, per_head_out) + head_bias
    return heads, attention.unsqueeze(-1) * per_token
