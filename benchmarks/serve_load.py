"""``compsearch serve`` under load: concurrent clients on 127.0.0.1 for a fixed time.

Builds (once, in --work) a world index the way a user would — `compsearch world render`,
`align` / `rank` / `index` with the fixture CLIP as the model (identity aligner: text queries
work) — starts `compsearch serve` on it as its own process, and runs --clients threads, each
sending one request after the other for --seconds: text queries and id queries ("more like
this") alternately, on a random property, k = 20. Prints requests/s, latency percentiles, the
error count (target 0) and the server's resident memory before and after; writes its section
of benchmarks/RESULTS.md.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/serve_load.py
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from compsearch.indexer.world.fixture_clip import fixture_clip_dir
from compsearch.mapping.cache import cache_dir
from results_section import write_section

REPO = Path(__file__).resolve().parents[1]
TEXTS = ("red", "blue", "a green star", "striped", "a dotted circle", "checkered", "a triangle", "on a beach",
         "a purple square in a forest", "noisy", "a yellow heart", "a cross")
K = 20


def compsearch(*arguments: str) -> str:
    command = [sys.executable, "-c", "from compsearch.search.launch import main; main()", *arguments]
    return subprocess.run(command, check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}).stdout


def build_index(work: Path, images: int) -> Path:
    """The world renders indexed by the fixture CLIP (reused when already built)."""
    index = work / "index"
    if (index / "manifest.json").is_file():
        return index
    model = f"local-dir:{fixture_clip_dir()}"
    compsearch("world", "render", str(work / "world"), "--split", "train", "--count", str(images), "--size", "96")
    renders = work / "world" / "train"
    compsearch("align", "--model", model, "--clip", model, "--images", str(renders), "--out", str(work / "identity"))
    compsearch("rank", "--model", model, "--aligner", str(work / "identity"), "--images", str(renders),
               "--property", "colour", "--property", "shape", "--property", "pattern", "--out", str(work / "ranking.json"))
    compsearch("index", str(renders), "--out", str(index), "--model", model, "--aligner", str(work / "identity"),
               "--ranking", str(work / "ranking.json"), "--device", "cpu", "--json")
    return index


def rss_mib(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"text": [], "id": []})
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def client(base: str, ids: list[int], properties: list[str], stop: float, seed: int, tally: Tally) -> None:
    chooser = random.Random(seed)
    with httpx.Client(base_url=base, timeout=60) as http:
        turn = seed
        while time.monotonic() < stop:
            kind = ("text", "id")[turn % 2]
            turn += 1
            query = {"text": chooser.choice(TEXTS)} if kind == "text" else {"id": chooser.choice(ids)}
            body = {**query, "property": chooser.choice(properties), "k": K}
            started = time.perf_counter()
            try:
                response = http.post("/api/search", json=body)
                failure = None if response.status_code == 200 and len(response.json()["results"]) == K \
                    else f"{response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as error:
                failure = repr(error)
            elapsed = time.perf_counter() - started
            with tally.lock:
                tally.latencies[kind].append(elapsed)
                if failure:
                    tally.errors.append(failure)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=cache_dir("serve-load"), help="Where the index is built (reused).")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--no-write", action="store_true", help="Print only; leave RESULTS.md alone.")
    arguments = parser.parse_args()
    index = build_index(arguments.work, arguments.images)
    server = subprocess.Popen(
        [sys.executable, "-c", "from compsearch.search.launch import main; main()", "serve", str(index), "--port", "0",
         "--cache-dir", str(arguments.work / "thumbnails"), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        base = server.stdout.readline().split(" at ")[1].strip()
        # uvicorn writes its access log to stdout: keep reading it, or a full pipe stops the server.
        threading.Thread(target=server.stdout.read, daemon=True).start()
        health = httpx.get(f"{base}api/health", timeout=60).json()
        factory = httpx.get(f"{base}api/info", timeout=60).json()["indexes"]["full"]["factory"]
        ids = list(range(health["images"]))
        rss_before, _ = rss_mib(server.pid)
        load_before = os.getloadavg()[0]
        tally = Tally()
        stop = time.monotonic() + arguments.seconds
        threads = [threading.Thread(target=client, args=(base, ids, health["properties"], stop, seed, tally))
                   for seed in range(arguments.clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        rss_after, rss_peak = rss_mib(server.pid)
        load_after = os.getloadavg()[0]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    every = tally.latencies["text"] + tally.latencies["id"]
    rows = [("all", every), ("text", tally.latencies["text"]), ("id", tally.latencies["id"])]
    lines = [
        "## HTTP server under load (CPU)",
        "",
        f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} .venv/bin/python benchmarks/serve_load.py` — "
        f"`compsearch serve` on 127.0.0.1 over a {health['images']}-image world index (fixture CLIP, identity "
        f"aligner; properties {', '.join(health['properties'])}; FAISS {factory}), {arguments.clients} client threads "
        f"for {arguments.seconds:.0f} s, each sending text and id queries alternately on a random property, k = {K}, "
        "one request after the other (closed loop).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. Load average (1 min) {load_before:.1f} before, {load_after:.1f} after "
        "(the clients share the cores with the server; a load above the core count means other processes did too).",
        "",
        "| queries | requests | requests/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, values in rows:
        lines.append(f"| {name} | {len(values)} | {len(values) / elapsed:.1f} | {statistics.median(values) * 1e3:.1f} | "
                     f"{percentile(values, 0.95) * 1e3:.1f} | {percentile(values, 0.99) * 1e3:.1f} |")
    lines += [
        "",
        f"Errors: {len(tally.errors)} of {len(every)} requests"
        + (f" (first: {tally.errors[0]})" if tally.errors else "") + ". "
        f"Server resident memory: {rss_before:.0f} MiB after start-up (models loaded), {rss_after:.0f} MiB after "
        f"the run (peak {rss_peak:.0f} MiB).",
    ]
    text = "\n".join(lines)
    print(text)
    if not arguments.no_write:
        write_section("serve-load", text)


if __name__ == "__main__":
    main()
