"""Grad-CAM on a timm plain ViT, with hooks: the baseline zero-shot segmentation is measured against.

The usual ViT recipe (as in pytorch-grad-cam): the activations are the spatial tokens entering
the last block's attention (the output of its ``norm1``), each channel weighted by the mean
over tokens of the class logit's gradient, summed over channels, kept positive, and laid on
the patch grid.
"""
from __future__ import annotations

from contextlib import ExitStack

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from compsearch.mapping.errors import UnsupportedModelError


def grad_cam(
    model: nn.Module, images: torch.Tensor, class_index: int | None = None, layer: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(maps (batch, rows, cols), classes (batch,))`` for ``class_index`` (default: predicted)."""
    if not isinstance(model, VisionTransformer):
        raise UnsupportedModelError(f"Grad-CAM here handles timm plain ViTs, not {type(model).__name__}",
                                    "use a DeiT / DINO / DINOv2 model")
    layer = layer or model.blocks[-1].norm1
    captured: dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        captured["activations"] = output
        output.register_hook(lambda gradient: captured.__setitem__("gradients", gradient))

    with ExitStack() as stack, torch.inference_mode(False), torch.enable_grad():
        stack.callback(layer.register_forward_hook(keep).remove)
        logits = model(images.clone().requires_grad_(True))  # a graph even with frozen weights
        classes = logits.argmax(-1) if class_index is None else torch.full_like(logits[:, 0], class_index, dtype=torch.long)
        logits.gather(1, classes[:, None]).sum().backward()
    prefix = model.num_prefix_tokens
    activations = captured["activations"].detach()[:, prefix:]
    weights = captured["gradients"][:, prefix:].mean(1, keepdim=True)
    maps = (activations * weights).sum(-1).clamp_min(0)
    grid = model.patch_embed.dynamic_feat_size(tuple(images.shape[-2:])) if model.dynamic_img_size else model.patch_embed.grid_size
    return maps.unflatten(1, tuple(grid)), classes
