"""The fixture CLIP's weights in the compact form the package ships.

Training never updates the fixture's 49408×64 token table (it is frozen at its random init),
yet the table is 94 % of the weights file. The packed form keeps every other tensor exactly
and, of the table, only the rows of the tokens in the project's texts (:func:`project_texts`);
:func:`unpack` draws the other rows afresh, N(0, 0.02²) as open_clip initialises them, from a
dedicated generator seeded with :data:`TOKEN_SEED`, so they depend neither on the global RNG
nor on the order in which open_clip builds its modules. On the project's texts the unpacked
model is the trained one exactly; other text sees rows as random, and as untrained, as the
trained model's own.
"""
from __future__ import annotations

from pathlib import Path

import open_clip
import safetensors
import safetensors.torch
import torch

from compsearch.indexer.world.captions import caption_pieces, zero_shot_prompts
from compsearch.indexer.world.factors import FACTORS
from compsearch.mapping.describe import read_text_bank
from compsearch.mapping.properties import builtin_property, builtin_property_names
from compsearch.mapping.properties.vocabulary import default_templates

TOKEN_TABLE = "token_embedding.weight"
SHIPPED_IDS = "token_embedding.shipped_ids"
SHIPPED_ROWS = "token_embedding.shipped_rows"
TOKEN_SEED = 0
TOKEN_STD = 0.02  # open_clip's init of the token table
TABLE_SIZE_KEY = "token_table_rows"


def project_texts() -> list[str]:
    """The texts the project gives a CLIP's text tower: the world's caption pieces and zero-shot
    prompts, the built-in property prompts, the default templates and the default text bank."""
    zero_shot = [prompt for factor, values in FACTORS.items() for value in values
                 for prompt in zero_shot_prompts(factor, value)]
    properties = [prompt for prop in map(builtin_property, builtin_property_names())
                  for description in prop.descriptions for prompt in prop.prompts(description)]
    return [*caption_pieces(), *zero_shot, *properties, *default_templates(), *read_text_bank()]


def used_token_ids() -> torch.Tensor:
    """Sorted ids of every token in :func:`project_texts`, start, end and padding included."""
    return torch.unique(open_clip.tokenize(project_texts()))


def regenerated_token_table(rows: int, width: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(TOKEN_SEED)
    return torch.empty(rows, width).normal_(0.0, TOKEN_STD, generator=generator)


def pack(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write ``state`` (a fixture state dict) to ``path`` with only the used token rows."""
    table, ids = state[TOKEN_TABLE], used_token_ids()
    tensors = {name: tensor for name, tensor in state.items() if name != TOKEN_TABLE}
    tensors |= {SHIPPED_IDS: ids, SHIPPED_ROWS: table[ids].contiguous()}
    safetensors.torch.save_file(tensors, path, metadata={**metadata, TABLE_SIZE_KEY: str(len(table))})


def read_metadata(path: Path) -> dict[str, str]:
    with safetensors.safe_open(path, "pt") as packed:
        return packed.metadata()


def unpack(path: Path) -> dict[str, torch.Tensor]:
    """The full state dict of a packed file: shipped rows in place, the others regenerated."""
    tensors = safetensors.torch.load_file(path)
    ids, rows = tensors.pop(SHIPPED_IDS), tensors.pop(SHIPPED_ROWS)
    table = regenerated_token_table(int(read_metadata(path)[TABLE_SIZE_KEY]), rows.shape[1])
    table[ids] = rows
    return {**tensors, TOKEN_TABLE: table}
