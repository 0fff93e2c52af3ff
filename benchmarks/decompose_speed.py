"""What RepDecompose costs on top of the model's own forward pass (CPU).

For each model and batch, in one process on the same batch, times three things:
the plain forward (the model's z), forward + per-head split, and forward + head×token
split. Modes are interleaved round-robin so a change of load on a shared machine hits all
three alike; each figure is the median of the repeats after a warm-up. Prints a table and
writes (or replaces) its own section of benchmarks/RESULTS.md.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/decompose_speed.py

``--models`` / ``--batches`` rerun only those cases; the section keeps the other rows.

Targets: head split ≤ +10 % of the forward for ViT-B at batch 32 and
≤ +20 % at batch 1; head×token ≤ 2×.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from compsearch.mapping.decompose import adapter_for, decompose
from compsearch.mapping.errors import UnsupportedModelError
from compsearch.mapping.models import LoadedModel, load_model
from results_section import RESULTS, read_section, write_section

MODES = ("plain", "heads", "heads×tokens")
SECTION = "decompose-speed"


@dataclass(frozen=True)
class Case:
    model: str
    batch: int
    first_block: str | None = None  # None: the adapter's default range


CASES = (
    Case("deit_tiny_patch16_224", 32),
    Case("deit_tiny_patch16_224", 1),
    Case("deit_tiny_patch16_224", 32, "all"),
    Case("deit_base_patch16_224", 32),
    Case("deit_base_patch16_224", 1),
    Case("swin_tiny_patch4_window7_224", 32),
    Case("swin_tiny_patch4_window7_224", 1),
)


@dataclass
class Timing:
    case: Case
    blocks: str
    seconds: dict[str, float]  # mode -> median seconds per batch

    def images_per_second(self, mode: str) -> float:
        return self.case.batch / self.seconds[mode]

    def ratio(self, mode: str) -> float:
        return self.seconds[mode] / self.seconds["plain"]


def run_mode(loaded: LoadedModel, batch: torch.Tensor, mode: str, first_block: str) -> None:
    with torch.inference_mode():
        if mode == "plain":
            loaded.encode_images(batch)
        else:
            decompose(loaded.model, batch, first_block, split_tokens=mode == "heads×tokens")


def time_case(case: Case, loaded: LoadedModel, repeats: int) -> Timing:
    first_block = adapter_for(loaded.model, loaded.name).resolve_first_block(case.first_block)
    size = loaded.model.pretrained_cfg["input_size"]
    batch = torch.randn(case.batch, *size)
    for mode in MODES:  # warm-up: allocator, kernels, lazily built buffers
        run_mode(loaded, batch, mode, first_block)
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode in MODES:
            started = time.perf_counter()
            run_mode(loaded, batch, mode, first_block)
            samples[mode].append(time.perf_counter() - started)
    label = "all" if case.first_block == "all" else f"from {first_block}"
    return Timing(case, label, {mode: statistics.median(values) for mode, values in samples.items()})


def row(t: Timing) -> str:
    return (f"| {t.case.model} | {t.case.batch} | {t.blocks} | {t.images_per_second('plain'):.1f} "
            f"| {t.images_per_second('heads'):.1f} | {t.images_per_second('heads×tokens'):.1f} "
            f"| {t.ratio('heads'):.2f} | {t.ratio('heads×tokens'):.2f} |")


def table(rows: list[str]) -> str:
    header = ("| model | batch | decomposed | plain img/s | heads img/s | heads×tokens img/s "
              "| heads / plain | heads×tokens / plain |")
    return "\n".join([header, "|---" * (header.count("|") - 1) + "|", *rows])


def with_rows_not_rerun(rows: list[str]) -> tuple[list[str], list[str]]:
    """``rows`` and the rows of the cases not rerun, from this benchmark's RESULTS.md section
    (so a run restricted with ``--models`` / ``--batches`` replaces only its own rows), in the
    order of :data:`CASES`; and the carried rows' models."""
    def case_of(line: str) -> tuple[str, ...]:  # model, batch, decomposed range
        return tuple(cell.strip() for cell in line.split("|")[1:4])

    rerun = {case_of(line) for line in rows}
    earlier = [line for line in read_section(SECTION).splitlines() if line.startswith("| ") and not line.startswith("| model")]
    carried = [line for line in earlier if case_of(line) not in rerun]
    order = [(case.model, str(case.batch), case.first_block == "all") for case in CASES]
    merged = sorted([*rows, *carried], key=lambda line: order.index((*case_of(line)[:2], case_of(line)[2] == "all")))
    return merged, sorted({case_of(line)[0] for line in carried})


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    cpu = names[0] if names else platform.processor() or platform.machine()
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads, Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per mode (median reported)")
    parser.add_argument("--models", nargs="*", help="only these model names")
    parser.add_argument("--batches", nargs="*", type=int, help="only these batch sizes")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    rows, notes = [], []
    loaded_models: dict[str, LoadedModel] = {}
    print(table([]), flush=True)
    for case in CASES:
        if (args.models and case.model not in args.models) or (args.batches and case.batch not in args.batches):
            continue
        if case.model not in loaded_models:
            loaded_models[case.model] = load_model(case.model, pretrained=False)  # speed needs no weights
        try:
            timing = time_case(case, loaded_models[case.model], args.repeats)
        except UnsupportedModelError as error:
            notes.append(f"skipped {case.model}: {error.problem}")
            print(notes[-1], file=sys.stderr)
            continue
        rows.append(row(timing))
        print(rows[-1], flush=True)
    load_after = os.getloadavg()[0]

    rows, carried_models = with_rows_not_rerun(rows)
    if carried_models:
        notes.append(f"rows of cases not rerun here ({', '.join(carried_models)}) are carried over from the "
                     "previous run of this section, whose machine and load they had")
    command = " ".join([f"OMP_NUM_THREADS={torch.get_num_threads()} .venv/bin/python benchmarks/decompose_speed.py",
                        *sys.argv[1:]]).strip()
    text = "\n".join([
        "## Decomposition speed (CPU)",
        "",
        f"`{command}` — random weights, {args.repeats} interleaved repeats after a warm-up, "
        "median seconds per batch, turned into images/s; ratios are time ÷ the plain forward "
        "(targets: heads ≤ 1.10 for ViT-B at batch 32, ≤ 1.20 at batch 1; heads×tokens ≤ 2).",
        "",
        f"Machine: {machine()}. Load average (1 min) {load_before:.1f} before, {load_after:.1f} after "
        "(a load above the core count means other processes shared the cores).",
        "",
        table(rows),
        *([""] + [f"- {note}" for note in notes] if notes else []),
    ])
    print("\n" + text)
    if not args.no_write:
        write_section(SECTION, text)
        print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
