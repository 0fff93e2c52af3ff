"""Token heatmaps: exact sums for every family, grids and pixels in the right place, the class readout."""
from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from timm.models.maxxvit import MaxxVit, model_cfgs

from compsearch.mapping.align import Aligner, AlignerMeta
from compsearch.mapping.decompose import Decomposition, TokenSplit, decompose
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.explain import (
    aligned_directions, class_directions, class_readout, grid_to_pixels, mapped_components, property_directions, token_heat,
)


def _tiny_maxvit() -> MaxxVit:
    base = model_cfgs["maxvit_small_tf"]
    cfg = dataclasses.replace(base, embed_dim=(16, 24, 32, 48), stem_width=8, head_hidden_size=48,
                              transformer_cfg=dataclasses.replace(base.transformer_cfg, dim_head=8, window_size=(2, 2)))
    return MaxxVit(cfg, img_size=64, num_classes=5)


def _tiny_clip() -> CLIP:
    vision = CLIPVisionCfg(layers=3, width=32, head_width=8, patch_size=8, image_size=32)
    return CLIP(embed_dim=24, vision_cfg=vision, text_cfg=CLIPTextCfg(context_length=8, vocab_size=64, width=16, heads=2, layers=1))


# family -> (tiny random model, input size, first block, the finest token grid expected)
FAMILIES = {
    "deit": (lambda: timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                       embed_dim=32, depth=4, num_heads=4, num_classes=5), 32, "all", (4, 4)),
    "dinov2-registers": (lambda: timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=42,
                                                   patch_size=14, embed_dim=32, depth=3, num_heads=2, num_classes=5),
                         42, None, (3, 3)),
    "open_clip": (_tiny_clip, 32, None, (4, 4)),
    # stage grids 32, 16, 8, 4: the default range (stages 2–3) gives 8×8 and 4×4, "all" reaches 32×32
    "swin": (lambda: timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, patch_size=2,
                                       window_size=4, embed_dim=16, depths=(2, 1, 2, 1), num_heads=(2, 2, 4, 4),
                                       num_classes=5), 64, None, (8, 8)),
    "swin-all": (lambda: FAMILIES["swin"][0](), 64, "all", (32, 32)),
    # stem /2, then stages at 16, 8, 4, 2: the default range starts in stage 2
    "maxvit": (_tiny_maxvit, 64, None, (4, 4)),
    "maxvit-all": (_tiny_maxvit, 64, "all", (16, 16)),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> tuple[Decomposition, torch.nn.Module, int, tuple[int, int]]:
    build, size, first_block, grid = FAMILIES[request.param]
    torch.manual_seed(0)
    model = build().eval()
    parts = decompose(model, torch.randn(2, 3, size, size), first_block=first_block, split_tokens=True)
    return parts, model, size, grid


def _chosen(parts: Decomposition) -> list[str]:
    """A mix: every third head, one MLP-like non-head component, and init."""
    heads = [name for name in parts.names if ".attn.h" in name][::3]
    others = [name for name in parts.names if ".attn.h" not in name]
    return ["init", *heads, others[len(others) // 2]]


def test_grid_is_the_finest_token_grid_and_heat_sums_to_the_projection(family) -> None:
    parts, _, size, grid = family
    components = _chosen(parts)
    directions = torch.randn(2, len(components), parts.contributions.shape[-1])
    heat = token_heat(parts, components, directions, constant=0.25)
    assert heat.grid.shape == (2, *grid)
    expected = sum((parts.component(name) * directions[:, position]).sum(-1) for position, name in enumerate(components))
    assert torch.allclose(heat.total, expected + 0.25, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert set(heat.located) == {name for name in components if ".attn.h" in name}
    assert heat.grid.abs().sum() > 0
    pixels = heat.pixels((size, size))
    assert pixels.shape == (2, size, size)
    assert torch.allclose(pixels.sum((1, 2)), heat.grid.sum((1, 2)), rtol=1e-4, atol=1e-6)


def test_only_the_chosen_heads_are_located(family) -> None:
    parts, _, _, _ = family
    head = next(name for name in parts.names if ".attn.h" in name)
    direction = torch.randn(2, parts.contributions.shape[-1])
    heat = token_heat(parts, [head], direction)
    assert heat.located == [head] and torch.all(heat.unlocated == 0)
    assert torch.allclose(heat.total, (parts.component(head) * direction).sum(-1), rtol=1e-4, atol=1e-5)


def test_class_readout_reproduces_the_models_logits(family) -> None:
    parts, model, size, _ = family
    if not hasattr(model, "get_classifier"):
        with pytest.raises(CompsearchError, match="no classification head"):
            class_readout(model)
        return
    torch.manual_seed(1)
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        z = decompose(model, images, first_block="all").output
        assert torch.allclose(class_readout(model)(z), model(images), atol=1e-5)
    directions, classes = class_directions(model, z)
    assert torch.equal(classes, model(images).argmax(-1))
    assert directions.shape == z.shape


def test_class_direction_of_a_linear_head_is_the_class_row() -> None:
    model = FAMILIES["deit"][0]().eval()
    z = torch.randn(3, 32)
    directions, classes = class_directions(model, z, class_index=2)
    assert classes.tolist() == [2, 2, 2]
    assert torch.allclose(directions, model.head.weight[2].expand(3, -1))
    with pytest.raises(CompsearchError, match="out of range"):
        class_directions(model, z, class_index=5)


def _split(block: str, grid: tuple[int, int], prefix: int, values: torch.Tensor) -> TokenSplit:
    """One head whose token t contributes ``values[t]`` times the first axis."""
    contributions = torch.zeros(1, 1, len(values), 2)
    contributions[0, 0, :, 0] = values
    return TokenSplit(block, [f"{block}.attn.h0"], contributions, grid, prefix)


def test_coarse_grids_spread_over_the_fine_cells_they_cover_and_prefix_is_kept_apart() -> None:
    fine = _split("a", (4, 4), 1, torch.cat([torch.tensor([100.0]), torch.arange(16.0)]))
    coarse = _split("b", (2, 2), 0, torch.tensor([4.0, 8.0, 12.0, 16.0]))
    names = ["a.attn.h0", "b.attn.h0"]
    contributions = torch.stack([split.contributions.sum(2)[:, 0] for split in (fine, coarse)], dim=1)
    parts = Decomposition("toy", names, contributions, contributions.sum(1), [fine, coarse])
    heat = token_heat(parts, names, torch.tensor([[1.0, 0.0]]))
    quarter = torch.tensor([[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    assert torch.equal(heat.grid[0], torch.arange(16.0).view(4, 4) + quarter)
    assert heat.prefix.item() == 100.0
    assert heat.total.item() == 100 + 120 + 40


def test_grid_cells_land_on_their_pixels_from_the_top_left() -> None:
    grid = torch.zeros(1, 3, 3)
    grid[0, 0, 2] = 9.0  # top row, right column
    pixels = grid_to_pixels(grid, (10, 10))  # cells of 3×3 pixels; the last row and column are not seen
    assert pixels[0, 0:3, 6:9].eq(1.0).all()
    assert pixels.sum().item() == 9.0 and pixels[0, :, 9].eq(0).all()


def test_heatmaps_need_the_token_split() -> None:
    model = FAMILIES["deit"][0]().eval()
    parts = decompose(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(CompsearchError, match="split_tokens=True"):
        token_heat(parts, parts.names, torch.randn(1, 32))


def _random_aligner(parts: Decomposition, clip_dim: int = 6) -> Aligner:
    meta = AlignerMeta(model_name="tiny", model_weights_id="random-init", clip_name="clip", clip_weights_id="x",
                       component_names=parts.names, model_dim=parts.contributions.shape[-1], clip_dim=clip_dim,
                       first_block=None)
    return Aligner(meta, torch.randn(len(parts.names), meta.model_dim, clip_dim), torch.randn(clip_dim))


def test_text_heat_through_an_aligner_sums_to_the_mapped_components_projection() -> None:
    model = FAMILIES["deit"][0]().eval()
    parts = decompose(model, torch.randn(2, 3, 32, 32), split_tokens=True)
    aligner = _random_aligner(parts)
    components = _chosen(parts)
    text = torch.nn.functional.normalize(torch.randn(1, 6), dim=-1).expand(2, -1)
    directions, constant = aligned_directions(aligner, components, text)
    heat = token_heat(parts, components, directions, constant)
    expected = (mapped_components(aligner, parts, components).sum(1) * text).sum(-1)
    assert torch.allclose(heat.total, expected, rtol=1e-4, atol=1e-4)


def test_property_heat_sums_to_the_size_of_the_part_in_the_subspace() -> None:
    model = FAMILIES["deit"][0]().eval()
    parts = decompose(model, torch.randn(2, 3, 32, 32), split_tokens=True)
    aligner = _random_aligner(parts)
    basis = torch.linalg.qr(torch.randn(6, 2))[0].T  # an orthonormal 2-d subspace of the 6-d space
    represented = mapped_components(aligner, parts, parts.names).sum(1)
    directions, constant = aligned_directions(aligner, parts.names, property_directions(basis, represented))
    heat = token_heat(parts, parts.names, directions, constant)
    assert torch.allclose(heat.total, (represented @ basis.T).norm(dim=-1), rtol=1e-4, atol=1e-5)
