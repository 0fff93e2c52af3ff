"""The contract every registered decomposition adapter keeps, checked on a tiny random model
of each family (like timm's test_models.py over its registry). A new family adds its tiny
model to tiny_models.CASES; its own test file keeps only what is specific to it."""
from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from compsearch.mapping.decompose import Decomposition, adapter_for, decompose, registered_adapters
from compsearch.mapping.decompose.families.openclip_vit import OpenClipViTAdapter
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.models import RANDOM_INIT, LoadedModel
from tests.mapping.decompose.exactness import TOLERANCE, assert_exact, relative_error
from tests.mapping.decompose.tiny_models import CASES, FIRST_BLOCKS, TinyCase

COMPONENT = re.compile(r"(?P<owner>.+)\.(?:attn\.h(?P<head>\d+)|mlp|conv)")




def test_every_registered_adapter_has_a_tiny_model() -> None:
    assert {case.adapter for case in CASES} == set(registered_adapters())


def test_the_registry_finds_the_family_and_keeps_one_adapter_per_model(case: TinyCase, model: nn.Module) -> None:
    adapter = adapter_for(model, case.id)
    assert type(adapter) is case.adapter
    assert adapter_for(model, case.id) is adapter  # decompose() per batch / per query builds nothing


@pytest.mark.parametrize("first_block", FIRST_BLOCKS)
def test_components_sum_to_the_models_own_output(case: TinyCase, model: nn.Module, first_block: str | None) -> None:
    images = case.images()
    decomposition = decompose(model, images, first_block)
    with torch.inference_mode():
        reference = case.reference(model, images)
    assert decomposition.token_splits is None  # only on request
    assert_exact(decomposition, reference)


@pytest.mark.parametrize("first_block", FIRST_BLOCKS)
def test_token_splits_sum_to_their_heads(case: TinyCase, model: nn.Module, first_block: str | None) -> None:
    decomposition = decompose(model, case.images(), first_block, split_tokens=True)
    adapter = adapter_for(model, case.id)
    blocks = adapter.block_names()
    first = blocks.index(adapter.resolve_first_block(first_block))
    owners = [split.block for split in decomposition.token_splits]
    # One split per decomposed attention, in forward order (MaxViT: two per block).
    assert [_block_of(owner, blocks) for owner in owners] == sorted(
        (_block_of(owner, blocks) for owner in owners), key=blocks.index
    )
    assert {_block_of(owner, blocks) for owner in owners} == set(blocks[first:])
    for split in decomposition.token_splits:
        columns = [decomposition.index(name) for name in split.component_names]
        assert split.component_names == [f"{split.block}.attn.h{head}" for head in range(len(columns))]
        batch, heads, tokens, dim = split.contributions.shape
        assert (batch, heads, dim) == (3, len(columns), decomposition.contributions.shape[-1])
        assert tokens == split.num_prefix_tokens + split.grid[0] * split.grid[1]
        heads_sum = split.contributions.sum(2)
        scale = decomposition.output.norm(dim=-1).max()
        torch.testing.assert_close(heads_sum, decomposition.contributions[:, columns], rtol=1e-5, atol=1e-6 * scale)
    assert_exact(decomposition)


@pytest.mark.parametrize("first_block", FIRST_BLOCKS)
def test_names_are_unique_module_paths_in_forward_order(case: TinyCase, model: nn.Module, first_block: str | None) -> None:
    """``init``, then per decomposed block its components named by absolute module path
    (``….attn.h{k}`` with k = 0…H−1, ``….mlp``, ``….conv``), then ``bias``."""
    names = decompose(model, case.images(1), first_block).names
    adapter = adapter_for(model, case.id)
    blocks = adapter.block_names()
    first = blocks.index(adapter.resolve_first_block(first_block))
    assert len(set(names)) == len(names)
    assert names[0] == "init" and names[-1] == "bias"
    heads: dict[str, list[int]] = {}
    for name in names[1:-1]:
        match = COMPONENT.fullmatch(name)
        assert match, f"{name!r} is not in the component-name scheme"
        owner = match["owner"]
        if match["head"] is None:
            model.get_submodule(name)  # the MLP or conv branch is a real module of the model
        else:
            heads.setdefault(owner, []).append(int(match["head"]))
    for owner, numbers in heads.items():
        assert numbers == list(range(model.get_submodule(f"{owner}.attn").num_heads))
    # Blocks in forward order, every one of the range present.
    order = [_block_of(name, blocks) for name in names[1:-1]]
    assert order == sorted(order, key=blocks.index) and set(order) == set(blocks[first:])


def test_an_image_splits_the_same_alone_as_in_a_batch(case: TinyCase, model: nn.Module) -> None:
    images = case.images()
    together = decompose(model, images, "all", split_tokens=True)
    for index in range(len(images)):
        alone = decompose(model, images[index:index + 1], "all", split_tokens=True)
        _assert_close_to_image(alone, together, index)


def test_training_mode_is_refused(case: TinyCase) -> None:
    model = case.model().train()
    with pytest.raises(CompsearchError, match="training mode") as raised:
        decompose(model, case.images(1))
    assert "model.eval()" in raised.value.hint
    assert_exact(decompose(model.eval(), case.images(1)))


def test_hooks_and_switches_are_undone_even_when_the_forward_fails(case: TinyCase, model: nn.Module) -> None:
    switches = {name: module.fused_attn for name, module in model.named_modules() if hasattr(module, "fused_attn")}
    decompose(model, case.images(1), "all", split_tokens=True)
    wrong_channels = torch.randn(1, 4, case.image_size, case.image_size)
    with pytest.raises(RuntimeError):
        decompose(model, wrong_channels, "all", split_tokens=True)
    assert not [name for name, module in model.named_modules() if module._forward_hooks or module._forward_pre_hooks]
    assert {name: module.fused_attn for name, module in model.named_modules() if hasattr(module, "fused_attn")} == switches


def test_encode_images_is_the_sum_of_the_components(case: TinyCase, model: nn.Module) -> None:
    """``LoadedModel.encode_images`` and the decomposition share one definition of z."""
    loaded = LoadedModel(case.id, model, preprocess=lambda image: image, tokenizer=None,
                         weights_id=RANDOM_INIT, is_clip=case.adapter is OpenClipViTAdapter)
    images = case.images()
    z = loaded.encode_images(images)
    decomposition = decompose(model, images)
    assert not z.is_inference()  # usable as a training target
    torch.testing.assert_close(z, decomposition.output, rtol=0, atol=0)
    assert relative_error(decomposition.reconstruction, z).max().item() <= TOLERANCE


def test_a_copied_model_is_split_on_its_own_weights(case: TinyCase, model: nn.Module) -> None:
    """The adapter kept on a model follows it into a deep copy (as EMA copies make) and then
    reads the copy, not the original."""
    images = case.images(1)
    original = decompose(model, images)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in copied.parameters():
            parameter.mul_(1.1)
    decomposition = decompose(copied, images)
    assert adapter_for(copied, case.id).model is copied
    assert_exact(decomposition)
    assert not torch.allclose(decomposition.contributions, original.contributions)


def _block_of(name: str, blocks: list[str]) -> str:
    """The decomposable block a component (or a token split's owner) belongs to."""
    return next(block for block in blocks if name == block or name.startswith(f"{block}."))


def _assert_close_to_image(alone: Decomposition, together: Decomposition, index: int) -> None:
    scale = together.output[index].norm()
    tolerance = dict(rtol=1e-4, atol=1e-5 * scale)
    assert alone.names == together.names
    torch.testing.assert_close(alone.contributions[0], together.contributions[index], **tolerance)
    for split_alone, split_together in zip(alone.token_splits, together.token_splits):
        torch.testing.assert_close(split_alone.contributions[0], split_together.contributions[index], **tolerance)
