"""Tiny, randomly initialised models of every decomposable family, and the contract's cases.

Every parameter that a default init would leave trivial (γ = 1, β = 0, zero biases,
constant LayerScale, unit BatchNorm statistics) is randomised: a wrongly placed or missing
term must change the result. Each family's own tests build variants from these too.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import timm
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
from timm.models.maxxvit import MaxxVit, model_cfgs
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from compsearch.indexer.world.fixture_clip import build_untrained, model_config
from compsearch.mapping.decompose import Adapter
from compsearch.mapping.decompose.families.maxvit import MaxVitAdapter
from compsearch.mapping.decompose.families.openclip_vit import OpenClipViTAdapter
from compsearch.mapping.decompose.families.swin import SwinAdapter
from compsearch.mapping.decompose.families.vit import VitAdapter

VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=6, num_heads=4, num_classes=0)
VIT_VARIANTS = {
    "deit": {},
    "dinov2-reg": dict(init_values=0.5, reg_tokens=4, no_embed_class=True),
    "avg-pool": dict(global_pool="avg"),
    "avg-no-cls-qk-norm": dict(global_pool="avg", class_token=False, qk_norm=True),
}

# 64 px, patch 2: stage grids 32, 16, 8, 4 with window 4, so stages 0–2 run shifted windows
# in their odd blocks, and three PatchMergings separate stage 0 from the output.
SWIN = dict(img_size=64, patch_size=2, window_size=4, embed_dim=16, depths=(2, 1, 2, 1), num_heads=(2, 2, 4, 4))

MAXVIT_IMAGE_SIZE = 64  # stages at 16, 8, 4, 2 px: 2×2 windows and grids, several per map below stage 3
MAXVIT_VARIANTS = {
    # maxvit_small_tf shrunk: same depths, pool-then-norm head, interleaved qkv, TF rel-pos bias
    "tf": {},
    # LayerScale, head-first qkv, plain rel-pos bias, grid attention only
    "layerscale-grid-only": dict(init_values=0.5, head_first=True, rel_pos_type="bias", no_block_attn=True),
}

CLIP_IMAGE_SIZE = 32
CLIP_TEXT = CLIPTextCfg(context_length=8, vocab_size=64, width=16, heads=2, layers=1)
CLIP_TOWER_VARIANTS = {
    "qk-norm": dict(qk_norm=True),
    "head-scales": dict(scale_heads=True),
    "ln-after-pool": dict(final_ln_after_pool=True, no_ln_pre=True, ls_init_value=None),
}


def tiny_vit(**overrides: object) -> VisionTransformer:
    model = VisionTransformer(**{**VIT, **overrides}).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            is_norm_scale = name.endswith("weight") and parameter.dim() == 1 and "norm" in name
            parameter.normal_(1.0 if is_norm_scale else 0.0, 0.2)
    return model


def tiny_swin(**overrides: object) -> SwinTransformer:
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **{**SWIN, **overrides})
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or "bias" in name:
                parameter.add_(0.5 * torch.randn_like(parameter))
    return model.eval()


def tiny_maxvit(**transformer_overrides: object) -> MaxxVit:
    """``maxvit_small_tf`` at toy width (with its tanh pre-logits layer)."""
    base = model_cfgs["maxvit_small_tf"]
    cfg = dataclasses.replace(
        base,
        embed_dim=(16, 24, 32, 48),
        stem_width=8,
        head_hidden_size=48,
        transformer_cfg=dataclasses.replace(
            base.transformer_cfg, dim_head=8, window_size=(2, 2), **transformer_overrides
        ),
    )
    model = MaxxVit(cfg, img_size=MAXVIT_IMAGE_SIZE, num_classes=10).eval().requires_grad_(False)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            is_scale = name.endswith(("weight", "gamma")) and parameter.dim() == 1
            parameter.normal_(1.0 if is_scale else 0.0, 0.2)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


def tiny_clip(model_class: type[nn.Module] = CLIP, **vision: Any) -> nn.Module:
    config = dict(layers=3, width=32, head_width=8, patch_size=8, image_size=CLIP_IMAGE_SIZE, ls_init_value=0.5)
    return perturbed(model_class(embed_dim=24, vision_cfg=CLIPVisionCfg(**{**config, **vision}), text_cfg=CLIP_TEXT))


def perturbed(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with its image tower's norms, biases and scales far from their inits."""
    with torch.no_grad():
        for name, parameter in model.visual.named_parameters():
            if any(key in name for key in ("ln", "bias", "gamma", "scale")):
                parameter.add_(0.5 * torch.randn_like(parameter))
    return model.eval()


def fixture_clip_architecture() -> nn.Module:
    """The project's world-trained fixture CLIP architecture, randomly initialised."""
    return perturbed(build_untrained()[0])


# The models' own outputs, computed without the adapters: what the components must sum to.

def timm_pre_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(images), pre_logits=True)


def clip_image_embedding(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.encode_image(images, normalize=True)


def maxvit_pre_logits_input(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What MaxViT's head feeds its pre-logits layer (the tf variants' Linear + tanh)."""
    kept: list[torch.Tensor] = []
    handle = model.head.pre_logits.register_forward_pre_hook(lambda _module, args: kept.append(args[0]))
    try:
        model(images)
    finally:
        handle.remove()
    return kept[0]


@dataclasses.dataclass(frozen=True)
class TinyCase:
    """One tiny model of a registered family, for the adapter contract."""

    id: str
    adapter: type[Adapter]
    build: Callable[[], nn.Module]
    image_size: int
    reference: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # the model's own z

    def model(self) -> nn.Module:
        torch.manual_seed(0)
        return self.build()

    def images(self, batch: int = 3, seed: int = 1) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(batch, 3, self.image_size, self.image_size, generator=generator)


CASES = [
    *(TinyCase(f"vit-{name}", VitAdapter, lambda o=overrides: tiny_vit(**o), VIT["img_size"], timm_pre_logits)
      for name, overrides in VIT_VARIANTS.items()),
    TinyCase("swin", SwinAdapter, tiny_swin, SWIN["img_size"], timm_pre_logits),
    *(TinyCase(f"maxvit-{name}", MaxVitAdapter, lambda o=overrides: tiny_maxvit(**o), MAXVIT_IMAGE_SIZE,
               maxvit_pre_logits_input)
      for name, overrides in MAXVIT_VARIANTS.items()),
    TinyCase("clip", OpenClipViTAdapter, lambda: tiny_clip(layers=6), CLIP_IMAGE_SIZE, clip_image_embedding),
    TinyCase("custom-text-clip", OpenClipViTAdapter, lambda: tiny_clip(CustomTextCLIP), CLIP_IMAGE_SIZE,
             clip_image_embedding),
    *(TinyCase(f"clip-{name}", OpenClipViTAdapter, lambda v=vision: tiny_clip(**v), CLIP_IMAGE_SIZE,
               clip_image_embedding)
      for name, vision in CLIP_TOWER_VARIANTS.items()),
    TinyCase("fixture-clip-architecture", OpenClipViTAdapter, fixture_clip_architecture,
             model_config()["vision_cfg"]["image_size"], clip_image_embedding),
]

FIRST_BLOCKS = [None, "all"]  # the family's default range, and every block
