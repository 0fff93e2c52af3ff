"""How long the ``compsearch`` command line takes to start: ``--help`` at every level and an
argument error, as wall time of a fresh interpreter, and what it imports (``-X importtime``).

    .venv/bin/python benchmarks/cli_startup.py [--baseline main] [--runs 5]

With ``--baseline REV`` the same commands also run on that git revision (extracted with
``git archive`` into a temporary folder), interleaved with the working tree's runs so a
change of load on a shared machine hits both alike. Each figure is the median of the runs.
Prints a table and rewrites its section of ``benchmarks/RESULTS.md``. Target (issue 7): every
``--help`` ≤ 1 s.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import click

from results_section import write_section

ROOT = Path(__file__).resolve().parents[1]
# The console script's entry point, then a report of what the process imported.
PROBE = """import sys
sys.argv = ["compsearch", *sys.argv[1:]]
from compsearch.search.launch import main
try:
    main()
finally:
    print("torch imported:", "torch" in sys.modules, file=sys.stderr)
"""
MISSING_IMAGE = "/nonexistent/photo.jpg"


def command_lines(tree: Path) -> list[list[str]]:
    """``--help`` of the group and of every registered command (and ``world``'s subcommands),
    plus a path error a user makes on the way in."""
    listing = subprocess.run([sys.executable, "-c", "from compsearch.search.cli import COMMANDS; print(*COMMANDS)"],
                             env=_env(tree), capture_output=True, text=True, check=True).stdout.split()
    lines = [["--help"]] + [[name, "--help"] for name in listing]
    lines += [["world", sub, "--help"] for sub in ("render", "fixture-clip")]
    return lines + [["decompose", MISSING_IMAGE, "--model", "deit_tiny_patch16_224"]]


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree)}


def run_once(tree: Path, arguments: list[str]) -> tuple[float, bool]:
    """(wall seconds, whether torch was imported) of one fresh ``compsearch ARGS``."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PROBE, *arguments], env=_env(tree), capture_output=True,
                            text=True, cwd=tree)
    seconds = time.perf_counter() - started
    if result.returncode not in (0, 2) or "torch imported:" not in result.stderr:
        raise click.ClickException(f"compsearch {' '.join(arguments)} failed in {tree}:\n{result.stderr}")
    return seconds, "torch imported: True" in result.stderr


def import_profile(tree: Path, arguments: list[str]) -> tuple[float, int, list[tuple[str, float]]]:
    """(seconds spent importing, modules imported, the three costliest top-level imports)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", PROBE, *arguments], env=_env(tree),
                            capture_output=True, text=True, cwd=tree)
    total, count, top = 0, 0, []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative_us, name = (part.strip() if i == 2 else part for i, part in
                                        enumerate(line[len("import time:"):].split("|")))
        total += int(self_us)
        count += 1
        if not name.startswith(" "):  # imported directly by the entry point, not as a dependency
            top.append((name.strip(), int(cumulative_us) / 1e6))
    return total / 1e6, count, sorted(top, key=lambda item: -item[1])[:3]


def extract(revision: str, into: Path) -> Path:
    archive = into / "tree.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), revision], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


@click.command()
@click.option("--baseline", default=None, metavar="REV", help="Also time this git revision (e.g. main).")
@click.option("--runs", type=click.IntRange(min=1), default=5, show_default=True, help="Runs per command (median).")
@click.option("--write/--no-write", default=True, show_default=True, help="Rewrite the RESULTS.md section.")
def main(baseline: str | None, runs: int, write: bool) -> None:
    load = os.getloadavg()[0]  # the machine is shared: say how busy it was
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"now": ROOT}
        if baseline:
            commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", baseline], capture_output=True,
                                    text=True, check=True).stdout.strip()
            trees = {f"{baseline} {commit}": extract(baseline, Path(scratch)), **trees}
        lines = command_lines(ROOT)
        seconds: dict[tuple[str, int], list[float]] = {}
        torch_loaded: dict[tuple[str, int], bool] = {}
        for _ in range(runs):
            for index, arguments in enumerate(lines):
                for label, tree in trees.items():
                    elapsed, loaded = run_once(tree, arguments)
                    seconds.setdefault((label, index), []).append(elapsed)
                    torch_loaded[label, index] = loaded
        profiles = {label: import_profile(tree, ["--help"]) for label, tree in trees.items()}

    labels = list(trees)
    header = " | ".join(f"{label} (s) | torch" for label in labels)
    rows = [f"| `compsearch {' '.join(arguments)}` | " + " | ".join(
        f"{statistics.median(seconds[label, index]):.2f} | {'yes' if torch_loaded[label, index] else 'no'}"
        for label in labels) + " |" for index, arguments in enumerate(lines)]
    profile_rows = [
        f"| {label} | {total:.2f} | {count} | " + ", ".join(f"`{name}` {cost:.2f}" for name, cost in top) + " |"
        for label, (total, count, top) in profiles.items()
    ]
    text = "\n".join([
        "## Command-line start-up", "",
        f"`.venv/bin/python benchmarks/cli_startup.py{f' --baseline {baseline}' if baseline else ''} --runs {runs}` "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores shared, load average {load:.1f} at the "
        f"start; Python {platform.python_version()})", "",
        f"Wall time of a fresh interpreter running the console script's entry point, median of {runs} runs"
        + (f", interleaved with the same commands on `{baseline}`" if baseline else "")
        + "; `torch`: whether the process imported torch. Target: every `--help` ≤ 1 s; the last row is a "
        "path error, which should be reported before any model library loads.", "",
        f"| command | {header} |", "|---|" + "---|---|" * len(labels), *rows, "",
        "`python -X importtime` of `compsearch --help`: seconds spent importing, modules imported, the costliest "
        "imports made by the entry point (cumulative seconds):", "",
        "| tree | import s | modules | costliest |", "|---|---|---|---|", *profile_rows,
    ])
    click.echo(text)
    if write:
        write_section("cli-startup", text)


if __name__ == "__main__":
    main()
