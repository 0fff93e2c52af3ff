"""How an index is built: the settings every stage and runner of :mod:`indexer.build` reads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from compsearch.indexer.faiss_choice import AUTO
from compsearch.mapping.images import DEFAULT_CHUNK_SIZE


@dataclass
class IndexSettings:
    index: str = AUTO  # a faiss index_factory string, or auto
    batch_size: int = 32
    workers: int | None = None  # decoding workers; None: chosen from the cores (mapping.images.parallelism)
    threads: int | None = None  # the model's torch threads; None: chosen from the cores
    chunk_size: int = DEFAULT_CHUNK_SIZE
    memory_budget: int | None = None  # bytes for the FAISS indexes; None: half the machine's memory
    jpeg_on_device: bool = True  # a CUDA model's JPEGs are decoded on its GPU (nvjpeg), not by PIL
    progress: bool = True
    backend: Literal["process", "ray"] = "process"  # who runs encode and write (indexer.runners, indexer.ray_runner)
    address: str | None = None  # with backend "ray": the cluster (auto, HOST:PORT); None: the connected or a local one
    shard: tuple[int, int] = (0, 1)  # (i, n): this process's share of the run's chunks (indexer.build)
    store: str | None = "fp16"  # the component store's arrays (fp16, fp32) beside the shards; None: none
