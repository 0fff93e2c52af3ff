"""The component store's contract over every registered family: the stored rows rebuild the
decomposition (fp32 to float rounding, fp16 to its documented precision), survive the flat
row form and its JSON layout, and refuse a model they do not fit."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compsearch.mapping.decompose import Decomposition, StoredComponents, decompose, expand, store_rows
from compsearch.mapping.decompose.store import FP16_RELATIVE_ERROR, SCALAR, StoredArray
from compsearch.mapping.errors import CompsearchError
from tests.mapping.decompose.tiny_models import FIRST_BLOCKS, TinyCase, tiny_clip, tiny_vit





@pytest.fixture(scope="module", params=FIRST_BLOCKS, ids=["default-range", "all-blocks"])
def decomposition(request: pytest.FixtureRequest, case: TinyCase, model: nn.Module) -> Decomposition:
    return decompose(model, case.images(), request.param, store=True)


def component_errors(expanded: torch.Tensor, decomposition: Decomposition) -> torch.Tensor:
    """Per image and component ‖expanded − c_i‖ / ‖c_i‖ (bias included)."""
    reference = decomposition.contributions.double()
    return (expanded.double() - reference).norm(dim=-1) / reference.norm(dim=-1)


def test_fp32_rows_rebuild_the_decomposition(model: nn.Module, decomposition: Decomposition) -> None:
    stored = decomposition.stored.to("fp32")
    expanded = expand(stored, model)
    assert stored.names == decomposition.names
    assert expanded.shape == decomposition.contributions.shape
    assert component_errors(expanded, decomposition).max().item() <= 1e-5


def test_fp16_rows_rebuild_the_decomposition_to_their_precision(model: nn.Module, decomposition: Decomposition) -> None:
    stored = decomposition.stored.to("fp16")
    errors = component_errors(expand(stored, model), decomposition)
    assert errors.max().item() <= FP16_RELATIVE_ERROR
    assert errors.max().item() > 1e-6  # the rows really were rounded


def test_rows_are_smaller_than_the_components_and_hold_every_one(decomposition: Decomposition) -> None:
    stored = decomposition.stored
    held = [name for array in stored.arrays.values() for name in array.components]
    assert held == decomposition.names[:-1]  # all but bias, which is rebuilt from weights and scalars
    layout = stored.to("fp16").layout()
    assert layout["values_per_image"] < decomposition.contributions[0].numel()
    assert layout["bytes_per_image"] == 2 * layout["values_per_image"] + 4 * layout["scalars_per_image"]


def test_flat_rows_and_their_json_layout_round_trip(model: nn.Module, decomposition: Decomposition) -> None:
    stored = decomposition.stored.to("fp16")
    values, scalars = stored.flat()
    layout = json.loads(json.dumps(stored.layout()))
    assert values.dtype == torch.float16 and scalars.dtype == torch.float32
    assert values.shape == (3, layout["values_per_image"]) and scalars.shape == (3, layout["scalars_per_image"])
    # The writer keeps one image per row: rows read back one at a time expand to that image.
    second = StoredComponents.from_flat(layout, values[1:2], scalars[1:2])
    scale = decomposition.output[1].norm().item()
    torch.testing.assert_close(expand(second, model)[0], expand(stored, model)[1], rtol=1e-5, atol=1e-6 * scale)


def test_store_rows_keeps_its_precision_and_scalars_in_fp32() -> None:
    model, images = tiny_vit(), torch.randn(2, 3, 32, 32)
    stored = store_rows(model, images, dtype="fp16")
    assert {array.data.dtype for array in stored.arrays.values()} == {torch.float16, torch.float32}
    assert all(array.data.dtype == torch.float32 for array in stored.arrays.values() if array.space == SCALAR)
    assert decompose(model, images).stored is None  # only on request
    with pytest.raises(CompsearchError, match="precision 'fp8'"):
        store_rows(model, images, dtype="fp8")


def test_a_store_from_another_model_is_refused() -> None:
    images = torch.randn(1, 3, 32, 32)
    stored = store_rows(tiny_vit(), images)
    with pytest.raises(CompsearchError, match="component store is from a plain-ViT"):
        expand(stored, tiny_clip())
    with pytest.raises(CompsearchError, match="does not fit"):
        expand(stored, tiny_vit(embed_dim=48))


def test_damaged_flat_rows_are_refused() -> None:
    stored = store_rows(tiny_vit(), torch.randn(2, 3, 32, 32))
    values, scalars = stored.flat()
    with pytest.raises(CompsearchError, match="values and .* scalars per image"):
        StoredComponents.from_flat(stored.layout(), values[:, :-1], scalars)


def test_values_that_overflow_fp16_are_refused() -> None:
    stored = StoredComponents("m", "plain-ViT", "blocks.0", ["init", "bias"],
                              {"init": StoredArray(torch.full((1, 4), 1e6), "stream", ["init"])})
    with pytest.raises(CompsearchError, match="overflows"):
        stored.to("fp16")


def test_a_vit_without_a_final_norm_stores_no_scalar() -> None:
    model, images = tiny_vit(final_norm=False), torch.randn(2, 3, 32, 32)
    decomposition = decompose(model, images, store=True)
    assert not [array for array in decomposition.stored.arrays.values() if array.space == SCALAR]
    torch.testing.assert_close(expand(decomposition.stored, model), decomposition.contributions)
