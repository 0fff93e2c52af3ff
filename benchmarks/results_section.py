"""Each benchmark owns one section of ``benchmarks/RESULTS.md`` and rewrites only that one."""
from __future__ import annotations

import os
import platform
import re
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
