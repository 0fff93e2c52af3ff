"""CompAlign on tensors: objective, regulariser, training, identity, persistence."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from compsearch.mapping.align import (
    Aligner,
    AlignerMeta,
    AlignerMismatchError,
    TensorSource,
    TrainSettings,
    alignment_loss,
    check_aligner,
    load_aligner,
    orthogonality_penalty,
    save_aligner,
    train_aligner,
)
from compsearch.mapping.align.files import aligner_paths
from compsearch.mapping.errors import CompsearchError


def _meta(names: list[str], model_dim: int, clip_dim: int, identity: bool = False) -> AlignerMeta:
    return AlignerMeta("deit_tiny_patch16_224", "abc", "ViT-B-16:x", "def", names, model_dim, clip_dim,
                       "blocks.7", identity=identity, final_loss=0.1, heldout_cosine=0.9)


def _orthonormal(components: int, rows: int, columns: int) -> torch.Tensor:
    """(components, rows, columns) with orthonormal columns (rows ≥ columns) or rows."""
    tall = torch.linalg.qr(torch.randn(components, max(rows, columns), min(rows, columns)))[0]
    return tall if rows >= columns else tall.transpose(1, 2)


def test_loss_matches_a_hand_computed_case() -> None:
    weight = torch.stack([torch.eye(2), torch.zeros(2, 2)])  # W_0 = I, W_1 = 0
    contributions = torch.tensor([[[1.0, 0.0], [5.0, -3.0]]])
    target = torch.tensor([[1.0, 1.0]])
    loss, cosine = alignment_loss(weight, torch.zeros(2), contributions, target)
    # cos([1,0],[1,1]) = 1/√2; regulariser (‖I−I‖² + ‖0−I‖²)/(n·d_clip) = 2/4
    assert cosine.item() == pytest.approx(1 / math.sqrt(2))
    assert loss.item() == pytest.approx(1 - 1 / math.sqrt(2) + 0.5)


@pytest.mark.parametrize("model_dim, clip_dim", [(6, 4), (4, 6), (5, 5)])
def test_regulariser_is_zero_exactly_for_partial_isometries(model_dim: int, clip_dim: int) -> None:
    weight = _orthonormal(3, model_dim, clip_dim)
    assert orthogonality_penalty(weight).item() == pytest.approx(0.0, abs=1e-10)
    assert orthogonality_penalty(1.1 * weight).item() > 0.01
    assert orthogonality_penalty(weight + 0.1 * torch.randn_like(weight)).item() > 1e-3


def test_regulariser_on_the_small_side_differs_from_the_large_side_by_a_constant() -> None:
    weight = torch.randn(2, 3, 7, dtype=torch.float64)  # d_model < d_clip: W Wᵀ is the small side
    large_side = (torch.einsum("cdk,cdl->ckl", weight, weight) - torch.eye(7)).pow(2).sum()
    assert orthogonality_penalty(weight).item() == pytest.approx(((large_side - 2 * (7 - 3)) / (2 * 7)).item())


def test_bias_is_shared_equally_and_sums_back() -> None:
    weight, bias = torch.randn(4, 3, 5), torch.randn(5)
    aligner = Aligner(_meta([f"c{i}" for i in range(4)], 3, 5), weight, bias)
    contributions = torch.randn(2, 4, 3)
    mapped = aligner.map_components(contributions)
    assert torch.allclose(mapped.sum(1), aligner.map_sum(contributions), atol=1e-5)
    assert torch.allclose(mapped[:, 0], contributions[:, 0] @ weight[0] + bias / 4, atol=1e-6)


def test_identity_aligner_returns_contributions_unchanged() -> None:
    aligner = Aligner.identity(_meta(["a", "b"], 4, 4, identity=True))
    contributions = torch.randn(3, 2, 4)
    assert torch.equal(aligner.map_components(contributions), contributions)
    assert torch.allclose(aligner.map_sum(contributions), contributions.sum(1))


def _planted_source(rows: int = 600) -> tuple[TensorSource, torch.Tensor]:
    truth = _orthonormal(3, 8, 4)
    contributions = torch.randn(rows, 3, 8)
    targets = F.normalize(torch.einsum("bcd,cdk->bk", contributions, truth), dim=-1)
    return TensorSource(contributions, targets, torch.arange(rows) % 5 == 0), truth


def test_training_recovers_a_planted_alignment() -> None:
    source, _ = _planted_source()
    result = train_aligner(source, 3, 8, 4, TrainSettings(learning_rate=1e-2, max_epochs=10), progress=False)
    assert result.heldout_cosine > 0.97
    assert orthogonality_penalty(result.weight).item() < 0.05


def test_early_stopping_counts_batches_without_improvement() -> None:
    # Identical rows and a zero learning rate: every batch has the first batch's loss.
    contributions = torch.randn(1, 3, 8).expand(400, 3, 8)
    source = TensorSource(contributions, torch.randn(1, 4).expand(400, 4), torch.zeros(400, dtype=torch.bool))
    settings = TrainSettings(learning_rate=0.0, weight_decay=0.0, patience=5, max_epochs=3)
    result = train_aligner(source, 3, 8, 4, settings, progress=False)
    assert result.stopped_early and result.batches == 1 + 5 and result.epochs == 1
    assert result.heldout_cosine is None


def test_persistence_round_trip(tmp_path) -> None:
    aligner = Aligner(_meta(["a", "b", "c"], 4, 6), torch.randn(3, 4, 6), torch.randn(6))
    written = save_aligner(aligner, tmp_path / "deit")
    assert written == tmp_path / "deit.safetensors" and (tmp_path / "deit.json").is_file()
    loaded = load_aligner(written)
    assert loaded.meta == aligner.meta
    assert torch.equal(loaded.weight, aligner.weight) and torch.equal(loaded.bias, aligner.bias)
    identity = Aligner.identity(_meta(["a"], 4, 4, identity=True))
    assert load_aligner(save_aligner(identity, tmp_path / "clip.safetensors")).weight is None


def test_loading_rejects_tensors_that_disagree_with_the_sidecar(tmp_path) -> None:
    save_aligner(Aligner(_meta(["a", "b"], 4, 6), torch.randn(2, 4, 6), torch.randn(6)), tmp_path / "x")
    sidecar = json.loads((tmp_path / "x.json").read_text())
    sidecar["component_names"].append("c")
    (tmp_path / "x.json").write_text(json.dumps(sidecar))
    with pytest.raises(AlignerMismatchError, match="does not match its sidecar"):
        load_aligner(tmp_path / "x")
    with pytest.raises(CompsearchError, match="does not exist"):
        load_aligner(tmp_path / "missing")


def test_check_aligner_names_the_mismatch() -> None:
    aligner = Aligner(_meta(["init", "blocks.7.mlp"], 4, 6), torch.randn(2, 4, 6), torch.zeros(6))
    check_aligner(aligner, ["init", "blocks.7.mlp"], 4, "deit_tiny_patch16_224")
    with pytest.raises(AlignerMismatchError, match="blocks.6.mlp"):
        check_aligner(aligner, ["init", "blocks.6.mlp", "blocks.7.mlp"], 4)
    with pytest.raises(AlignerMismatchError, match="8-d"):
        check_aligner(aligner, ["init", "blocks.7.mlp"], 8)
    with pytest.raises(AlignerMismatchError, match="not vit_small"):
        check_aligner(aligner, ["init", "blocks.7.mlp"], 4, "vit_small")
    with pytest.raises(AlignerMismatchError, match="weights abc, not 0123"):
        check_aligner(aligner, ["init", "blocks.7.mlp"], 4, "deit_tiny_patch16_224", "0123")


def test_aligner_paths_accept_either_form(tmp_path) -> None:
    assert aligner_paths(tmp_path / "a") == aligner_paths(tmp_path / "a.safetensors")
