"""Token heatmaps: where, on the image, chosen components' projection on a direction comes from.

RepDecompose's token split (``decompose(..., split_tokens=True)``) gives, for every head of
every decomposed block, its contribution read from each token; those parts sum exactly to
the head. Projected on a direction (a text embedding, a property direction, a class's row
of the head), each token's part is a number, and the numbers of the chosen heads, laid on
the patch grid the block attends over, are the heatmap. Nothing is approximated:

    grid.sum() + prefix + unlocated == ⟨Σ_{i chosen} c_i, u_i⟩ + constant

with ``prefix`` what the heads read from prefix tokens (CLS, registers: no place in the
image) and ``unlocated`` what comes from chosen components without a token split (MLPs,
``init``, ``bias``) and the caller's image-independent ``constant``.

Grids. Plain and open_clip ViTs attend over one patch grid (14×14 for ViT-B/16 at 224, 37×37
for DINOv2 at 518); Swin and MaxViT blocks attend over their stage's feature map (56…7 at
224), every token split listed in row-major order of its own grid. Heat is summed on the
finest grid of the decomposition; a coarser grid's cell is spread evenly over the finer cells
it covers (stage maps halve, so they nest). A cell of an R×C grid covers the
``(H // R) × (W // C)`` pixels at its place from the top-left corner of the H×W model input,
as a stride-``H // R`` patch embedding or downsampling sees it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from compsearch.mapping.decompose import Decomposition, TokenSplit
from compsearch.mapping.errors import CompsearchError


@dataclass
class Heatmap:
    """Heat of a batch of images over the finest token grid of their decomposition."""

    components: list[str]  # the chosen components
    located: list[str]  # those split by token (attention heads); the rest are unlocated
    grid: torch.Tensor  # (batch, rows, cols) heat per grid cell
    prefix: torch.Tensor  # (batch,) heat read from prefix tokens (CLS, registers)
    unlocated: torch.Tensor  # (batch,) heat of components without a token split, plus the constant

    @property
    def total(self) -> torch.Tensor:
        """(batch,) the whole projection: located, prefix and unlocated heat together."""
        return self.grid.sum((1, 2)) + self.prefix + self.unlocated

    def pixels(self, size: tuple[int, int]) -> torch.Tensor:
        """(batch, H, W) heat per pixel of the ``size`` model input; sums to ``grid.sum()``
        when the grid tiles the input exactly (pixels a patch embedding drops get none)."""
        return grid_to_pixels(self.grid, size)


def grid_to_pixels(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Spread each cell of (batch, rows, cols) evenly over the pixels it covers in ``size``."""
    rows, cols = grid.shape[-2:]
    cell_h, cell_w = size[0] // rows, size[1] // cols
    if cell_h == 0 or cell_w == 0:
        raise CompsearchError(f"a {rows}×{cols} grid cannot be laid on a {size[0]}×{size[1]} image",
                              "pass the size of the model input the grid was computed on")
    spread = _spread(grid, (cell_h, cell_w)) / (cell_h * cell_w)
    return torch.nn.functional.pad(spread, (0, size[1] - cols * cell_w, 0, size[0] - rows * cell_h))


def _spread(grid: torch.Tensor, factor: tuple[int, int]) -> torch.Tensor:
    return grid.repeat_interleave(factor[0], dim=-2).repeat_interleave(factor[1], dim=-1)


def finest_grid(splits: list[TokenSplit]) -> tuple[int, int]:
    rows = max(split.grid[0] for split in splits)
    cols = max(split.grid[1] for split in splits)
    for split in splits:
        if rows % split.grid[0] or cols % split.grid[1]:
            raise CompsearchError(
                f"{split.block}'s {split.grid} token grid does not nest in the finest one {(rows, cols)}",
                "use an input size whose stage maps halve exactly (e.g. 224 px)",
            )
    return rows, cols


def token_heat(
    decomposition: Decomposition,
    components: list[str],
    directions: torch.Tensor,
    constant: torch.Tensor | float = 0.0,
) -> Heatmap:
    """The heatmap of ``components`` projected on ``directions``.

    ``directions``: (batch, dim), one direction in the model's output space per image, or
    (batch, len(components), dim), one per component (an aligner maps each component by its
    own matrix, so a CLIP-space direction t becomes W_i t for component i). ``constant``
    (a number or (batch,)) is added to the unlocated heat, e.g. an aligner's bias projected.
    """
    if decomposition.token_splits is None:
        raise CompsearchError("the decomposition has no token split",
                              "decompose with split_tokens=True to draw heatmaps")
    batch = decomposition.contributions.shape[0]
    if directions.dim() == 2:
        directions = directions.unsqueeze(1).expand(-1, len(components), -1)
    directions = directions.to(decomposition.contributions.dtype)
    column = {name: position for position, name in enumerate(components)}
    rows, cols = finest_grid(decomposition.token_splits)
    grid = decomposition.contributions.new_zeros(batch, rows, cols)
    prefix = decomposition.contributions.new_zeros(batch)
    located: list[str] = []
    for split in decomposition.token_splits:
        chosen = [(head, column[name]) for head, name in enumerate(split.component_names) if name in column]
        if not chosen:
            continue
        heads, columns = zip(*chosen)
        per_token = torch.einsum("bhtd,bhd->bt", split.contributions[:, list(heads)], directions[:, list(columns)])
        prefix += per_token[:, :split.num_prefix_tokens].sum(1)
        spatial = per_token[:, split.num_prefix_tokens:].unflatten(1, split.grid)
        factor = (rows // split.grid[0], cols // split.grid[1])
        grid += _spread(spatial, factor) / (factor[0] * factor[1])
        located += [split.component_names[head] for head in heads]
    unlocated = decomposition.contributions.new_zeros(batch) + torch.as_tensor(constant, dtype=grid.dtype)
    located_names = set(located)
    for name in (name for name in components if name not in located_names):  # in order: a reproducible sum
        unlocated += (decomposition.component(name) * directions[:, column[name]]).sum(-1)
    return Heatmap(list(components), located, grid, prefix, unlocated)
