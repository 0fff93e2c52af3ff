"""RepDecompose on timm Swin Transformers: the per-slot readout against per-token routes, window
layouts, odd grids, the cached slot maps (the contract every adapter keeps is in test_contract.py)."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, window_reverse

from compsearch.mapping.decompose import adapter_for, decompose, linearised_layer_norm
from compsearch.mapping.decompose.families import swin
from compsearch.mapping.decompose.families.swin import SwinAdapter
from compsearch.mapping.errors import CompsearchError, UnsupportedModelError
from tests.mapping.decompose.exactness import assert_exact
from tests.mapping.decompose.tiny_models import SWIN, timm_pre_logits, tiny_swin

@pytest.fixture(scope="module")
def model() -> SwinTransformer:
    torch.manual_seed(0)
    return tiny_swin()


def images(batch: int = 3, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


def test_the_tiny_model_exercises_shifted_windows_in_every_merged_stage(model: SwinTransformer) -> None:
    assert [any(any(block.shift_size) for block in layer.blocks) for layer in model.layers] == [True, False, True, False]


@pytest.mark.parametrize("first_block", ["layers.1.blocks.0", "layers.3.blocks.0"])
def test_ranges_starting_at_a_stage_are_exact(model: SwinTransformer, first_block: str) -> None:
    batch = images()
    with torch.no_grad():
        assert_exact(decompose(model, batch, first_block), timm_pre_logits(model, batch))


@pytest.mark.parametrize("first_block", [None, "all"])
def test_token_split_layout_per_stage(model: SwinTransformer, first_block: str | None) -> None:
    split = decompose(model, images(), first_block, split_tokens=True)
    blocks = ["layers.2.blocks.0", "layers.2.blocks.1", "layers.3.blocks.0"]
    if first_block == "all":
        blocks = ["layers.0.blocks.0", "layers.0.blocks.1", "layers.1.blocks.0", *blocks]
    assert [token_split.block for token_split in split.token_splits] == blocks
    grids = {"0": (32, 32), "1": (16, 16), "2": (8, 8), "3": (4, 4)}
    for token_split in split.token_splits:
        stage = token_split.block.split(".")[1]
        heads = SWIN["num_heads"][int(stage)]
        assert token_split.grid == grids[stage] and token_split.num_prefix_tokens == 0
        assert token_split.contributions.shape == (3, heads, grids[stage][0] * grids[stage][1], 128)


def test_components_are_named_by_module_path_in_forward_order(model: SwinTransformer) -> None:
    split = decompose(model, images())
    expected = ["init"]
    for block, heads in (("layers.2.blocks.0", 4), ("layers.2.blocks.1", 4), ("layers.3.blocks.0", 4)):
        expected += [f"{block}.attn.h{head}" for head in range(heads)] + [f"{block}.mlp"]
    assert split.names == expected + ["bias"]
    assert adapter_for(model, "tiny").block_names()[0] == "layers.0.blocks.0"


@pytest.mark.parametrize(
    ("depths", "first_block"),
    [((2, 2, 18, 2), "layers.2.blocks.14"), ((1, 1, 6, 1), "layers.2.blocks.2"), ((1, 1, 2, 1), "layers.2.blocks.0")],
)
def test_default_range_is_the_last_four_blocks_of_the_penultimate_stage(depths: tuple[int, ...], first_block: str) -> None:
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=2, embed_dim=8, depths=depths, num_heads=(1, 1, 1, 1)
    )
    assert SwinAdapter(model, "swin").default_first_block() == first_block


@torch.no_grad()
def per_token_readout(model: SwinTransformer, stage: int, branch: torch.Tensor, streams: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reference route: carry a per-token branch (batch, H, W, dim) through every later
    PatchMerging and the final norm, each linearised per token, then take the token mean."""
    for later in range(stage + 1, len(model.layers)):
        merge = model.layers[later].downsample
        batch, height, width, dim = branch.shape
        branch = F.pad(branch, (0, 0, 0, width % 2, 0, height % 2))
        gathered = branch.reshape(batch, (height + 1) // 2, 2, (width + 1) // 2, 2, dim).permute(0, 1, 3, 4, 2, 5).flatten(3)
        normalised, _ = linearised_layer_norm(gathered.unsqueeze(-2), streams[f"merge{later}"], merge.norm)
        branch = merge.reduction(normalised.squeeze(-2))
    normalised, _ = linearised_layer_norm(branch.unsqueeze(-2), streams["final"], model.norm)
    return normalised.squeeze(-2).mean((1, 2))


@pytest.mark.parametrize("block_name", ["layers.2.blocks.1", "layers.3.blocks.0", "layers.0.blocks.1"])
def test_components_match_the_hooked_branches_read_out_per_token(model: SwinTransformer, block_name: str) -> None:
    """A block's MLP component, and the sum of its heads, equal its hooked branch outputs carried
    token by token to z — the direct route that the adapter's pooled per-slot readout avoids."""
    _, stage, _, index = block_name.split(".")
    stage = int(stage)
    block = model.layers[stage].blocks[int(index)]
    streams: dict[str, torch.Tensor] = {}
    handles = [
        block.register_forward_pre_hook(lambda m, args: streams.__setitem__("in", args[0])),
        block.register_forward_hook(lambda m, args, out: streams.__setitem__("out", out)),
        block.mlp.register_forward_hook(lambda m, args, out: streams.__setitem__("mlp", out)),
        model.norm.register_forward_pre_hook(lambda m, args: streams.__setitem__("final", args[0])),
    ]
    for later in range(stage + 1, len(model.layers)):
        handles.append(model.layers[later].downsample.norm.register_forward_pre_hook(
            lambda m, args, key=f"merge{later}": streams.__setitem__(key, args[0])
        ))
    batch = images()
    with torch.inference_mode():
        split = decompose(model, batch, block_name)
        model.forward_features(batch)
    for handle in handles:
        handle.remove()
    mlp = streams["mlp"].view_as(streams["in"])
    attention = streams["out"] - streams["in"] - mlp  # the attention branch, on the grid
    heads = [split.index(f"{block_name}.attn.h{head}") for head in range(block.attn.num_heads)]
    torch.testing.assert_close(split.component(f"{block_name}.mlp"), per_token_readout(model, stage, mlp, streams), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(split.contributions[:, heads].sum(1), per_token_readout(model, stage, attention, streams), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("index", [0, 1])
def test_key_tokens_of_a_window_carry_what_its_queries_output(model: SwinTransformer, index: int) -> None:
    """Window attention: a key token feeds only the queries of its own window. In stage 2
    (8×8 grid, 4×4 windows; ``blocks.1`` shifted by 2, so its windows wrap around the grid),
    the token split summed over one window's keys equals the heads' outputs at that window's
    queries, read out per token."""
    block_name, block = f"layers.2.blocks.{index}", model.layers[2].blocks[index]
    shift = block.shift_size[0]
    assert shift == 2 * index and block.window_size == (4, 4)
    streams: dict[str, torch.Tensor] = {}
    handles = [
        block.attn.proj.register_forward_pre_hook(lambda m, args: streams.__setitem__("mixed", args[0])),
        model.layers[3].downsample.norm.register_forward_pre_hook(lambda m, args: streams.__setitem__("merge3", args[0])),
        model.norm.register_forward_pre_hook(lambda m, args: streams.__setitem__("final", args[0])),
    ]
    batch = images()
    with torch.inference_mode():
        split = decompose(model, batch, block_name, split_tokens=True)
        model.forward_features(batch)
        heads, proj = block.attn.num_heads, block.attn.proj
        per_head = torch.einsum("wnhk,chk->wnhc", streams["mixed"].unflatten(-1, (heads, -1)), proj.weight.unflatten(1, (heads, -1)))
        # Back to the grid as the block itself does it: window_reverse, then undo the cyclic shift.
        per_head = window_reverse((per_head + proj.bias / heads).flatten(2).unflatten(1, (4, 4)), (4, 4), 8, 8)
        per_head = torch.roll(per_head, (shift, shift), (1, 2)).unflatten(-1, (heads, -1)).movedim(3, 1)
    for handle in handles:
        handle.remove()
    keys = split.token_splits[0].contributions.unflatten(2, (8, 8))
    window_of = (torch.arange(8) - shift) % 8 // 4  # window row (or column) of each grid row (or column)
    for window in [(0, 0), (1, 0), (0, 1)]:
        inside = (window_of[:, None] == window[0]) & (window_of[None, :] == window[1])  # (8, 8)
        queries = per_head * inside[:, :, None]
        read_out = per_token_readout(model, 2, queries.flatten(0, 1), {k: v.repeat_interleave(heads, 0) for k, v in streams.items()})
        torch.testing.assert_close(keys[:, :, inside].sum(2), read_out.unflatten(0, (-1, heads)), rtol=1e-4, atol=1e-5)


def test_odd_grids_and_padded_windows_split_exactly_but_refuse_the_token_split() -> None:
    # 40 px, patch 2: grids 20, 10, 5, 3; window 4 pads stages 1 and 2, and 5 → 3 merges a padded row.
    model = tiny_swin(img_size=40)
    batch = images(size=40)
    assert_exact(decompose(model, batch, "all"))
    with pytest.raises(CompsearchError, match="multiples of the window size"):
        decompose(model, batch, "all", split_tokens=True)


@pytest.fixture
def slot_map_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The first stage of every slot-map build from now on."""
    builds: list[int] = []
    build = swin._build_slot_maps

    def counted(model: SwinTransformer, first_stage: int, key: tuple) -> object:
        builds.append(first_stage)
        return build(model, first_stage, key)

    monkeypatch.setattr(swin, "_build_slot_maps", counted)
    return builds


def test_slot_maps_are_built_once_per_model_and_deepest_range(slot_map_builds: list[int]) -> None:
    model = tiny_swin()
    for first_block in (None, None, "all", None, "layers.1.blocks.0"):
        decompose(model, images(1), first_block)
    assert slot_map_builds == [2, 0]  # the maps down to stage 0 serve every later range


@pytest.mark.parametrize(
    "parameter", ["norm.weight", "layers.3.downsample.norm.bias", "layers.2.downsample.reduction.weight"]
)
def test_a_changed_weight_rebuilds_the_slot_maps(slot_map_builds: list[int], parameter: str) -> None:
    model, batch = tiny_swin(), images()
    decompose(model, batch, "all")
    with torch.no_grad():
        model.get_parameter(parameter).mul_(1.5).add_(0.1)  # in place: same tensor, new version
        assert_exact(decompose(model, batch, "all"), timm_pre_logits(model, batch))
    assert slot_map_builds == [0, 0]


@pytest.mark.parametrize("change", ["load_state_dict", "double"])
def test_new_weights_or_dtype_rebuild_the_slot_maps(slot_map_builds: list[int], change: str) -> None:
    model, batch = tiny_swin(), images()
    decompose(model, batch, "all")
    if change == "load_state_dict":
        model.load_state_dict(tiny_swin().state_dict())
    else:
        model.double()
        batch = batch.double()
    with torch.no_grad():
        assert_exact(decompose(model, batch, "all"), timm_pre_logits(model, batch))
    assert slot_map_builds == [0, 0]


def test_slot_maps_built_under_autocast_serve_a_full_precision_call(slot_map_builds: list[int]) -> None:
    model, batch = tiny_swin(), images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        decompose(model, batch)
    assert_exact(decompose(model, batch))
    assert slot_map_builds == [2]


def test_non_mean_pooling_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="global_pool='max'"):
        decompose(tiny_swin(global_pool="max"), images())


def test_unknown_first_block_is_a_user_error(model: SwinTransformer) -> None:
    with pytest.raises(CompsearchError, match="not a decomposable block"):
        decompose(model, images(), "blocks.3")


@pytest.mark.slow
@pytest.mark.parametrize("first_block", [None, "all"])
def test_real_size_swin_base_is_exact(first_block: str | None) -> None:
    model = timm.create_model("swin_base_patch4_window7_224", pretrained=False).eval()
    split = decompose(model, torch.randn(2, 3, 224, 224), first_block, split_tokens=first_block is None)
    assert_exact(split)
    if first_block is None:
        assert split.names[1] == "layers.2.blocks.14.attn.h0" and len(split.names) == 2 + 4 * 17 + 2 * 33
        assert [s.contributions.shape[1:3] for s in split.token_splits] == [(16, 196)] * 4 + [(32, 49)] * 2
