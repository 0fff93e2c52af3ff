"""What a heatmap projects on: a class of the model's own head, or a CLIP-space direction
(a text, a property) carried back into the model's space through the aligner."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import NormMlpClassifierHead
from torch import nn

from compsearch.mapping.align import Aligner
from compsearch.mapping.decompose import Decomposition
from compsearch.mapping.errors import CompsearchError


def class_readout(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The map from z (what RepDecompose splits) to the model's class logits.

    timm's pre-logits feed the classifier directly, except in heads with a hidden layer
    (MaxViT's ``NormMlpClassifierHead``: Linear + tanh), whose z is that layer's input.
    """
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(classifier, nn.Linear):
        raise CompsearchError(
            f"{getattr(model, 'compsearch_name', type(model).__name__)} has no classification head",
            "explain a text or a property instead (--text, or --ranking with --property)",
        )
    head = getattr(model, "head", None)
    if isinstance(head, NormMlpClassifierHead):
        return lambda z: head.fc(head.drop(head.pre_logits(z)))
    return classifier


def class_directions(
    model: nn.Module, z: torch.Tensor, class_index: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(directions (batch, dim), classes (batch,))``: ∂ logit / ∂z of ``class_index`` (each
    image's predicted class when None) at each image's z.

    For a linear head that is the class's row of the weight, so the heat sums to the chosen
    components' share of the logit (its bias aside); a head with a nonlinear hidden layer is
    linearised at the image's own z.
    """
    readout = class_readout(model)
    with torch.inference_mode(False), torch.enable_grad():
        z = z.detach().clone().requires_grad_(True)
        logits = readout(z)
        classes = logits.argmax(-1) if class_index is None else torch.full_like(logits[:, 0], class_index, dtype=torch.long)
        if not 0 <= int(classes.max()) < logits.shape[-1]:
            raise CompsearchError(f"class {class_index} is out of range",
                                  f"the model has {logits.shape[-1]} classes, 0..{logits.shape[-1] - 1}")
        (gradient,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), z)
    return gradient.detach(), classes.detach()


def _positions(aligner: Aligner, components: Sequence[str]) -> list[int]:
    missing = [name for name in components if name not in aligner.component_names]
    if missing:
        raise CompsearchError(f"the aligner maps no component named {missing[0]!r}",
                              "choose among the aligner's components (decompose from its first block)")
    return [aligner.component_names.index(name) for name in components]


def aligned_directions(
    aligner: Aligner | None, components: Sequence[str], clip_directions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-space directions (batch, d_clip) as per-component directions in the model's space.

    ``⟨f_i(c), t⟩ = ⟨c, W_i t⟩ + ⟨b/n, t⟩``: returns ``(W_i t (batch, components, d_model),
    Σ_i ⟨b/n, t⟩ (batch,))``. ``aligner=None`` means the model is the CLIP (identity).
    """
    clip_directions = clip_directions.float()
    if aligner is None or aligner.weight is None:
        return clip_directions.unsqueeze(1).expand(-1, len(components), -1), clip_directions.new_zeros(len(clip_directions))
    weight = aligner.weight[_positions(aligner, components)]  # (components, d_model, d_clip)
    share = aligner.bias / len(aligner.component_names)
    return torch.einsum("cdk,bk->bcd", weight, clip_directions), len(components) * (clip_directions @ share)


def mapped_components(aligner: Aligner | None, decomposition: Decomposition, components: Sequence[str]) -> torch.Tensor:
    """f_i(c_i) of the chosen components (batch, components, d_clip)."""
    contributions = torch.stack([decomposition.component(name) for name in components], dim=1).float()
    if aligner is None or aligner.weight is None:
        return contributions
    share = aligner.bias / len(aligner.component_names)
    return torch.einsum("bcd,cdk->bck", contributions, aligner.weight[_positions(aligner, components)]) + share


def property_directions(basis: torch.Tensor, representation: torch.Tensor) -> torch.Tensor:
    """Per image, the unit direction of the property subspace (rows of ``basis``) that its
    ``representation`` (batch, d_clip) points along: the heat then sums to ‖B v‖, the size of
    the representation's part in the property's subspace."""
    projected = (representation.float() @ basis.T.float()) @ basis.float()
    return F.normalize(projected, dim=-1)
