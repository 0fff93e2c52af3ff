"""How a pass over images splits the cores between decoding and the model.

Decoding must overlap the model's compute without oversubscribing the cores: W decoding
workers (one intra-op thread each) prefetch batches while the model runs on T threads in the
main process. ``auto`` chooses both from the cores this process may run on
(``os.sched_getaffinity``), by the measurements in benchmarks/RESULTS.md (index-speed).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

AUTO = "auto"


@dataclass(frozen=True)
class Parallelism:
    workers: int  # decoding processes beside the main one (0: decode in the main process)
    threads: int  # torch intra-op threads of the model in the main process


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks on macOS and Windows
        return os.cpu_count() or 1


def choose_parallelism(device: torch.device | str, workers: int | None = None,
                       threads: int | None = None, cores: int | None = None) -> Parallelism:
    """Decoding workers and model threads for a model on ``device``; ``workers``/``threads``
    given (not None) are kept as they are."""
    cores = cores or usable_cores()
    on_gpu = torch.device(device).type != "cpu"
    if workers is None:
        # On a GPU the cores only decode. On a CPU one worker prefetches the next batch while
        # the model runs: decoding costs a fraction of a forward, so one worker keeps up.
        workers = min(cores - 1, 8) if on_gpu else (1 if cores > 1 else 0)
    if threads is None:
        threads = 1 if on_gpu else cores
    return Parallelism(workers, max(threads, 1))
