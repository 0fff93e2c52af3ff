"""Query cost from a shell, and large / filtered result sets on a 1M-vector index.

    .venv/bin/python benchmarks/cli_query.py [--runs 5] [--size 1000000] [--dim 512]

1. **Cold queries from the shell** on the demo's world index (the fixture CLIP, identity-aligned,
   1000 renders; built once by ``compsearch demo --model fixture``'s own code): a fresh
   ``compsearch search`` process per query — by id, by text, by a reference image — wall time
   and peak memory (the process's max RSS), median of ``--runs``. The towers are removed first,
   so the first text and image query runs torch and writes its ONNX tower (timed once, apart);
   the runs after it go through the towers (no torch). Then the same queries warm (one
   ``SearchIndex``, towers loaded); and through a running server (``compsearch search
   http://…``: the command's wall time, in this editable install and in a regular one built
   from this tree, and the HTTP round trip alone). Beside them, Python's own start
   (``python -c pass``), the floor of any command's wall time. Targets (issue 17):
   id ≤ 0.5 s, text ≤ 1 s, image ≤ 2 s cold; ≤ 50 ms through a server.
2. **Many results and filters at scale**: an index directory of ``--size`` synthetic unit
   vectors (Gaussian, ``--dim``; written as real shards and a real Flat FAISS index through the
   indexer's finish stage), queried through ``SearchIndex``: k = 10,000 (target < 1 s), and
   filtered queries at selectivities from 1e-5 to 1, each by the exact scan of the selected
   vectors and by FAISS's ``IDSelector`` — the figures behind ``search.filtered.EXACT_SCAN_MAX``.

rclip is not run beside it: it needs the same CLIP weights exported to ONNX, and no CLIP
weights can be fetched here. Writes its section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from results_section import publish

ROOT = Path(__file__).resolve().parents[1]
COMPSEARCH = [sys.executable, "-c", "from compsearch.search.launch import main; main()"]


def cold(arguments: list[str], runs: int, command: list[str] = COMPSEARCH, cwd: Path | None = None) -> tuple[float, float]:
    """Median wall seconds and peak RSS (MiB) of fresh ``command`` processes. The peak comes
    from GNU time around the command: a child forked from this (large) process would report the
    parent's RSS as its own high-water mark."""
    walls, peaks = [], []
    with tempfile.NamedTemporaryFile("r") as peak:
        for _ in range(runs):
            started = time.perf_counter()
            done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", peak.name, *command, *arguments],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd)
            walls.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(command + arguments)} failed: {done.stderr}")
            peaks.append(int(Path(peak.name).read_text().split()[-1]) / 1024)
    return statistics.median(walls), statistics.median(peaks)


def warm(call, runs: int) -> float:
    call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def regular_install(workdir: Path) -> list[str]:
    """The command as a regular (not editable) install runs it: this tree's wheel in a fresh
    venv that reaches this venv's packages through a ``.pth`` line. An editable install's import
    finder costs every start ~10 ms, which a user's ``pip install compsearch`` does not pay."""
    import sysconfig

    venv = workdir / "regular-venv"
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheels = workdir / "wheel"
    shutil.rmtree(wheels, ignore_errors=True)
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True)
    subprocess.run([*pip, "install", "--no-deps", "--target", site, *map(str, wheels.glob("*.whl"))], check=True)
    return [str(python), "-c", "from compsearch.search.launch import main; main()"]  # run outside this tree


def demo_index(workdir: Path) -> Path:
    from compsearch.search.demo import run_demo

    return Path(run_demo(workdir, progress=False, say=lambda _: None, model_choice="fixture").index_dir)


def shell_queries(workdir: Path, runs: int) -> list[str]:
    from compsearch.search.index import SearchIndex
    from compsearch.search.remote import search_remote
    from compsearch.search.server.app import create_app
    from compsearch.search.server.run import bind, url

    from compsearch.mapping.onnx.towers import IMAGE_TOWER, TEXT_TOWER

    index_dir = demo_index(workdir)
    towers = {"text": index_dir / TEXT_TOWER, "image": index_dir / IMAGE_TOWER}
    for tower in towers.values():
        tower.unlink(missing_ok=True)  # the first query of each kind writes it (timed apart)
    image = next((workdir / "world-96" / "test").glob("*.png"), None) or next(workdir.rglob("*.png"))
    queries = {
        "id": (["--id", "3", "-p", "colour"], dict(id=3, property="colour")),
        "text": (["--text", "red", "-p", "colour"], dict(text="red", property="colour")),
        "image": (["--image", str(image), "-p", "colour"], dict(image=image, property="colour")),
    }
    index = SearchIndex(index_dir)
    import uvicorn

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(index_dir), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    address = url(sock)
    regular = regular_install(workdir)
    targets = {"id": 0.5, "text": 1.0, "image": 2.0}  # cold, seconds (issue 17)
    verdicts = []
    lines = ["| query | first cold query, torch, writes the tower (s) | cold wall (s) | cold peak RSS (MiB) | "
             "warm in-process (ms) | via server: command wall (ms) | via server, regular install: command wall (ms) "
             "| via server: HTTP round trip (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    try:
        for kind, (arguments, python) in queries.items():
            first = cold(["search", str(index_dir), *arguments, "-k", "10"], 1)[0] if kind in towers else None
            assert kind not in towers or towers[kind].is_file(), f"the first {kind} query wrote no tower"
            wall, peak = cold(["search", str(index_dir), *arguments, "-k", "10"], runs)
            in_process = warm(lambda: index.search(k=10, **python), runs)
            remote_wall, _ = cold(["search", address, *arguments, "-k", "10"], 4 * runs)  # ms each: more runs
            regular_wall, _ = cold(["search", address, *arguments, "-k", "10"], 4 * runs, regular, workdir)
            served = warm(lambda: search_remote(address, k=10, **python), runs)  # HTTP round trip, no process start
            lines.append(f"| {kind} | {'–' if first is None else f'{first:.2f}'} | {wall:.2f} | {peak:.0f} | "
                         f"{in_process * 1e3:.1f} | {remote_wall * 1e3:.0f} | {regular_wall * 1e3:.0f} | {served * 1e3:.1f} |")
            verdicts.append(f"{kind} {wall:.2f} s against {targets[kind]:g} s "
                            f"({'met' if wall <= targets[kind] else 'missed'})")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    python_start = cold(["-c", "pass"], 4 * runs, [sys.executable])[0]
    regular_start = cold(["-c", "pass"], 4 * runs, regular[:1], workdir)[0]
    return lines + ["", "Cold targets: " + "; ".join(verdicts) + ". After the first query of each kind, text and "
                    "image queries run their ONNX towers and import no torch; an id query imports numpy, faiss and "
                    f"pyarrow only. Python's own start (`python -c pass`): {python_start * 1e3:.0f} ms in this (editable) "
                    f"install's venv, {regular_start * 1e3:.0f} ms in the regular install's. Through a server the "
                    "command (target 50 ms) is answered without click, urllib or logging (`search/launch.py`): "
                    "Python's start, the HTTP round trip and a few ms of imports."]


ENCODER = SimpleNamespace(names=["full"], space="model")  # what the finish stage asks of an encoder


def synthetic_rows(start: int, count: int, dim: int, seed: int) -> tuple[list[dict], np.ndarray]:
    """Rows ``start`` … (ids, keys, a ``group`` column 0..999 for filters) and their Gaussian vectors."""
    ids = np.arange(start, start + count)
    rows = [{"id": int(i), "key": f"{i:08d}.jpg", "path": None, "sha256": f"{i:064x}", "width": 1, "height": 1,
             "group": int(i % 1000)} for i in ids]
    return rows, np.random.default_rng(seed).standard_normal((count, dim), dtype=np.float32)


def synthetic_index(folder: Path, size: int, dim: int, chunk: int = 100_000, index: str = "Flat"):
    """``size`` vectors as real shards and an ``index`` built by the indexer's finish stage:
    the store, its manifest and the settings it was built with."""
    from compsearch.indexer.finish import finish
    from compsearch.indexer.manifest import Manifest, Provenance
    from compsearch.indexer.settings import IndexSettings
    from compsearch.indexer.store import ChunkRows, IndexStore
    from compsearch.mapping.identity import EncoderIdentity

    store = IndexStore(folder)
    for number, start in enumerate(range(0, size, chunk)):
        rows, vectors = synthetic_rows(start, min(chunk, size - start), dim, seed=number)
        store.write_chunk(ChunkRows(0, number, rows, {"full": vectors}, [], []))
    identity = EncoderIdentity("synthetic", "random-init", "blocks.0", "model", None, None, None, "fp32")
    manifest = Manifest.new(identity, Provenance(), "benchmark", "now")
    settings = IndexSettings(index=index, progress=False)
    finish(store, manifest, ENCODER, settings)
    return store, manifest, settings


def at_scale(size: int, dim: int, runs: int) -> list[str]:
    import compsearch.search.filtered as filtered
    from compsearch.search.index import SearchIndex

    lines = []
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        synthetic_index(Path(folder), size, dim)
        built = time.perf_counter() - started
        index = SearchIndex(folder)
        query = dict(id=12345)
        k10000 = warm(lambda: index.search(k=10_000, **query), runs)
        page = warm(lambda: index.search(k=10_000, offset=20_000, **query), runs)
        lines += [f"{size:,} × {dim} vectors (Flat; shards + index built in {built:.0f} s): "
                  f"k = 10,000 in {k10000 * 1e3:.0f} ms; the page at offset 20,000 in {page * 1e3:.0f} ms "
                  f"(median of {runs}, through SearchIndex: query vector, FAISS, rows of 10,000 results).", "",
                  "| selected | where | exact scan (ms) | FAISS IDSelector (ms) |", "|---:|---|---:|---:|"]
        for where, selected in (("id == 777", 1), ("group == 7 and id < 100000", size // 10_000),
                                ("group == 7", size // 1000), ("group < 20", size // 50),
                                ("group < 100", size // 10), ("group < 500", size // 2), ("id >= 0", size)):
            timings = []
            for limit in (size + 1, 0):  # everything by the exact scan, then everything through FAISS
                filtered.EXACT_SCAN_MAX = limit
                timings.append(warm(lambda: index.search(k=10, where=where, **query), runs))
            lines.append(f"| {selected:,} | `{where}` | {timings[0] * 1e3:.0f} | {timings[1] * 1e3:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "compsearch-cli-query")
    options = parser.parse_args()
    load = os.getloadavg()[0]
    lines = ["## Queries from the shell, many results, filters (issue 17)", "",
             f"`.venv/bin/python benchmarks/cli_query.py --runs {options.runs} --size {options.size} "
             f"--dim {options.dim}`; {os.cpu_count()} cores, load average {load:.2f} at the start.", ""]
    lines += shell_queries(options.workdir, options.runs)
    lines += [""] + at_scale(options.size, options.dim, options.runs)
    lines += ["", f"Load average at the end: {os.getloadavg()[0]:.2f}."]
    publish("cli-query", lines)


if __name__ == "__main__":
    main()
