"""Each benchmark owns one section of ``benchmarks/RESULTS.md`` and rewrites only that one."""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import click

RESULTS = Path(__file__).with_name("RESULTS.md")
# The project's real data beside the checkout (the package never looks there: benchmarks pass it).
SHARED = Path(__file__).resolve().parents[2] / "shared"
DEIT_WEIGHTS = SHARED / "models" / "deit_tiny_patch16_224.in1k.safetensors"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def read_section(name: str) -> str:
    """The text of section ``name`` as written last ("" if absent)."""
    begin, end = _markers(name)
    current = RESULTS.read_text() if RESULTS.exists() else ""
    found = re.search(re.escape(begin) + "\n(.*?)\n" + re.escape(end), current, flags=re.S)
    return found.group(1) if found else ""


def write_section(name: str, text: str) -> None:
    """Replace the section between ``<!-- name:begin -->`` and ``<!-- name:end -->`` (appended if absent)."""
    begin, end = _markers(name)
    section = f"{begin}\n{text.rstrip()}\n{end}"
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if begin in current and end in current:
        updated = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: section, current, flags=re.S)
    else:
        updated = current.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(updated)


def shared_cpu() -> str:
    """The machine as a CPU-bound section states it: processor, cores (shared), torch threads."""
    import torch  # only the sections that run torch ask

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared, "
            f"torch threads {torch.get_num_threads()}")


def publish(name: str, lines: list[str]) -> None:
    """Print a benchmark's section and write it into ``RESULTS.md``."""
    text = "\n".join(lines)
    click.echo(text)
    write_section(name, text)


def raw_options(parser: argparse.ArgumentParser, raw_name: str) -> None:
    """The options of a benchmark that keeps its raw measurements in a JSON file: where
    (``--raw``, in the temporary folder by default), reporting from one without measuring
    (``--report``), and printing without rewriting RESULTS.md (``--no-write``)."""
    parser.add_argument("--raw", type=Path, default=Path(tempfile.gettempdir()) / raw_name,
                        help="where the raw measurements are written (rewritten after each case)")
    parser.add_argument("--report", type=Path, help="only rewrite the section from this raw JSON file")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")


def command_line(script: str, environment: tuple[str, ...] = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")) -> str:
    """How this run was started, as RESULTS.md quotes it: the thread settings it ran under, then
    ``script`` and its arguments."""
    settings = [f"{name}={os.environ[name]}" for name in environment if name in os.environ]
    return " ".join([*settings, f".venv/bin/python {script}", *sys.argv[1:]])


def report_raw(args: argparse.Namespace, section: str, measure: Callable[[], dict], report: Callable[[dict], str]) -> None:
    """The end of such a benchmark: the raw measurements read from ``--report`` or measured
    (``measure`` writes them to ``--raw`` as it goes), the section printed and, unless
    ``--no-write``, written into RESULTS.md."""
    if args.report:
        raw = json.loads(args.report.read_text())
    else:
        raw = measure()
        print(f"raw measurements: {args.raw}")
    text = report(raw)
    print("\n" + text)
    if not args.no_write:
        write_section(section, text)
        print(f"\nwrote {RESULTS}")
