"""What a decomposition is, and the registry of per-family adapters that produce one.

An adapter wraps one architecture family's real timm / open_clip modules (no
re-implementation): it hooks the forward pass, and returns the model's own output ``z``
together with its exact split into named component contributions (docs/architecture.md, Decomposition).

Conventions shared by every adapter:
- z, what the components sum to, is the representation the adapter's ``output()`` defines,
  the one definition (``LoadedModel.encode_images`` delegates to it): timm pre-logits
  (``forward_head(x, pre_logits=True)``); for MaxViT-tf the input of the head's Linear + tanh
  pre-logits layer (a tanh of a sum is no sum of components); for open_clip the normalised
  image embedding;
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

import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

import torch
from torch import nn

from compsearch.mapping.decompose.store import StoredArray, StoredComponents
from compsearch.mapping.errors import CompsearchError, UnsupportedModelError


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
    stored: StoredComponents | None = None  # the compact form, on request (``store=True``)

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


CaptureT = TypeVar("CaptureT")
# What a family's ``_compact`` returns: the component names, the stored arrays in forward
# order, and the geometry (JSON values) its ``_expand`` needs besides the weights.
Compact = tuple[list[str], dict[str, StoredArray], dict]
Transform = Callable[[torch.Tensor], torch.Tensor]


class HookScope(ExitStack):
    """Forward hooks and module switches that last one ``with`` block: every hook is removed
    and every switch restored on exit, also when the forward pass raises."""

    def on_input(self, module: nn.Module, action: Callable[[torch.Tensor], None]) -> None:
        """Call ``action`` with ``module``'s first positional input, before the module runs."""
        self.callback(module.register_forward_pre_hook(lambda _module, args: action(args[0])).remove)

    def on_output(self, module: nn.Module, action: Callable[[torch.Tensor], None]) -> None:
        """Call ``action`` with ``module``'s output."""
        self.callback(module.register_forward_hook(lambda _module, _args, output: action(output)).remove)

    def keep_input(self, module: nn.Module, into: object, key: str | int, transform: Transform | None = None) -> None:
        """Store ``module``'s first input (through ``transform``) as ``into.key`` (or ``into[key]``)."""
        self.on_input(module, lambda tensor: _store(into, key, transform(tensor) if transform else tensor))

    def keep_output(self, module: nn.Module, into: object, key: str | int, transform: Transform | None = None) -> None:
        """Store ``module``'s output (through ``transform``) as ``into.key`` (or ``into[key]``)."""
        self.on_output(module, lambda tensor: _store(into, key, transform(tensor) if transform else tensor))

    def materialise_attention(self, attention: nn.Module) -> None:
        """Switch off ``attention``'s fused kernel, which never materialises the attention
        weights: the explicit path computes them as a tensor that hooks can read."""
        self.callback(setattr, attention, "fused_attn", attention.fused_attn)
        attention.fused_attn = False


def _store(into: object, key: str | int, value: torch.Tensor) -> None:
    if isinstance(into, dict):
        into[key] = value
    else:
        setattr(into, key, value)


class Adapter(Generic[CaptureT]):
    """Decomposes one architecture family. Subclasses register with :func:`register_adapter`.

    The generic part lives here: the training-mode refusal, hooks scoped to one forward pass,
    inference mode, and one pass at a time per model. A family says only what differs:

    - ``module_classes``, ``family`` and ``supported_hint`` (for its refusals), and
      ``training_randomness`` (what makes its forward random in training mode);
    - :meth:`block_names` and :meth:`default_first_block`;
    - :meth:`_forward`: z from the model's own modules (the one definition of z, also behind
      ``LoadedModel.encode_images``);
    - :meth:`_check_supported`: raises :meth:`unsupported` for configurations it cannot split;
    - :meth:`_hook`: installs the hooks of one pass and returns what they will fill;
    - :meth:`_compact`: turns that into the compact, exact form of the components (the
      component store, see ``store.py``), and :meth:`_expand` that form into the components:
      ``decompose`` runs both, so the store and the decomposition are one computation;
    - :meth:`_token_splits`: the heads split by token, on request.
    """

    module_classes: ClassVar[tuple[type[nn.Module], ...]] = ()
    family: ClassVar[str] = ""
    supported_hint: ClassVar[str] = ""
    training_randomness: ClassVar[str] = "dropout, stochastic depth"

    def __init__(self, model: nn.Module, model_name: str) -> None:
        self.model = model
        self.model_name = model_name
        # Hooks live on the shared model: a second pass running meanwhile (another thread
        # decomposing or encoding with the same model) would fire them with its own images.
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        # Adapters are cached on their model, which deepcopy (EMA copies) and pickle copy:
        # the copy starts afresh (a lock cannot be copied, caches belong to the original).
        return {"model": self.model, "model_name": self.model_name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"], state["model_name"])

    def block_names(self) -> list[str]:
        raise NotImplementedError

    def default_first_block(self) -> str:
        raise NotImplementedError

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        """z, computed by the model's own modules (so the decomposition's hooks fire)."""
        raise NotImplementedError

    def _check_supported(self) -> None:
        """Raise :meth:`unsupported` for a configuration this family cannot split exactly."""

    def _hook(self, hooks: HookScope, first: int, split_tokens: bool) -> CaptureT:
        """Install, on ``hooks``, what one forward pass must keep from ``block_names()[first:]``."""
        raise NotImplementedError

    def _compact(self, captured: CaptureT, images: torch.Tensor) -> Compact:
        """The stored form of the components from what the hooks kept, in inference mode."""
        raise NotImplementedError

    def _expand(self, stored: StoredComponents, captured: CaptureT | None) -> torch.Tensor:
        """The components (batch, components, dim) from their stored form; ``captured`` is the
        pass's own capture when there is one (what it already holds need not be rebuilt)."""
        raise NotImplementedError

    def _token_splits(self, captured: CaptureT, images: torch.Tensor) -> list[TokenSplit]:
        """Every decomposed attention's heads split by token, after :meth:`_compact`."""
        raise NotImplementedError

    def output(self, images: torch.Tensor) -> torch.Tensor:
        """The model's representation z: what the components of an image sum to."""
        with self._lock, torch.no_grad():
            return self._forward(images)

    def decompose(
        self, images: torch.Tensor, first_block: str, split_tokens: bool, store: bool = False
    ) -> Decomposition:
        """Split z of ``images`` from the block named ``first_block`` on (see :meth:`resolve_first_block`);
        with ``store`` the decomposition also carries its compact form (in the model's dtype)."""
        self.require_eval_mode()
        first = self.block_names().index(first_block)
        with self._lock, torch.inference_mode():
            with HookScope() as hooks:
                captured = self._hook(hooks, first, split_tokens)
                z = self._forward(images)
            names, arrays, geometry = self._compact(captured, images)
            stored = StoredComponents(self.model_name, self.family, first_block, names, arrays, geometry)
            contributions = self._expand(stored, captured)
            token_splits = self._token_splits(captured, images) if split_tokens else None
        return Decomposition(self.model_name, names, contributions, z, token_splits, stored if store else None)

    def expand(self, stored: StoredComponents) -> torch.Tensor:
        """The components (batch, components, dim) that ``stored`` holds, in the model's dtype."""
        if stored.family != self.family or stored.first_block not in self.block_names():
            raise CompsearchError(
                f"the component store is from a {stored.family} model decomposed from {stored.first_block}, "
                f"not from {self.model_name} ({self.family})",
                "expand a store with the model that wrote it, or rebuild the store",
            )
        parameter = next(self.model.parameters())
        stored = stored.to(parameter.dtype, parameter.device)
        with self._lock, torch.inference_mode():
            try:
                return self._expand(stored, None)
            except (RuntimeError, AttributeError, KeyError, IndexError) as error:
                raise CompsearchError(
                    f"the component store does not fit {self.model_name} ({error})",
                    "expand a store with the model that wrote it, or rebuild the store",
                ) from None

    def unsupported(self, what: str, hint: str | None = None) -> UnsupportedModelError:
        """The refusal of a model configuration: ``what`` it has, and what to use instead."""
        return UnsupportedModelError(
            f"{self.model_name}: {what}, which the {self.family} decomposition does not handle",
            hint or self.supported_hint,
        )

    def require_eval_mode(self) -> None:
        """Refuse a model with any module in training mode, where its forward is random."""
        if any(module.training for module in self.model.modules()):
            raise CompsearchError(f"{self.model_name} is in training mode ({self.training_randomness})",
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


class TimmPreLogitsAdapter(Adapter[CaptureT]):
    """A timm model whose z is its pre-logits vector: ``forward_head(forward_features(x), pre_logits=True)``."""

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)


_ADAPTERS: list[type[Adapter]] = []
# The adapter of a model is built once and kept on the model itself (the indexer decomposes
# per batch, the search server per query); it dies with the model.
_CACHED_ADAPTER = "_compsearch_adapter"


def register_adapter(adapter: type[Adapter]) -> type[Adapter]:
    """Class decorator: make ``adapter`` handle models of its ``module_classes``."""
    _ADAPTERS.append(adapter)
    return adapter


def registered_adapters() -> tuple[type[Adapter], ...]:
    """Every registered adapter class, in registration order."""
    return tuple(_ADAPTERS)


def adapter_for(model: nn.Module, model_name: str) -> Adapter:
    """The adapter whose ``module_classes`` match ``model`` (most specific class first),
    after checking that it can split this model's configuration.

    The check runs on every call (tens of microseconds): a model changed in place, e.g. by timm's
    ``reset_classifier(global_pool=...)``, must not be split on its old assumptions.
    """
    adapter = cached_adapter(model, model_name)
    adapter._check_supported()
    return adapter


def cached_adapter(model: nn.Module, model_name: str) -> Adapter:
    """``model``'s adapter, built on first use and kept on the model, without the support check:
    z (:meth:`Adapter.output`) is defined for every model of the family, split or not."""
    adapter = getattr(model, _CACHED_ADAPTER, None)
    if adapter is None:
        adapter = _adapter_class(model, model_name)(model, model_name)
        setattr(model, _CACHED_ADAPTER, adapter)
    adapter.model_name = model_name  # only names the model in messages and results
    return adapter


def _adapter_class(model: nn.Module, model_name: str) -> type[Adapter]:
    for cls in type(model).__mro__:
        for adapter in _ADAPTERS:
            if cls in adapter.module_classes:
                return adapter
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
    return frozen_layer_norm(components, layer_norm_inverse_sigma(stream, norm), norm)


def frozen_layer_norm(
    components: torch.Tensor, inverse_sigma: torch.Tensor, norm: nn.LayerNorm | nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`linearised_layer_norm` with the stream's 1/σ (…, 1) given (e.g. stored) rather than computed."""
    centred = components - components.mean(dim=-1, keepdim=True)
    weight = norm.weight if getattr(norm, "weight", None) is not None else 1.0
    normalised = centred * inverse_sigma.unsqueeze(-2) * weight
    shape = (*components.shape[:-2], components.shape[-1])
    beta = norm.bias if getattr(norm, "bias", None) is not None else components.new_zeros(components.shape[-1])
    return normalised, beta.expand(shape)



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
