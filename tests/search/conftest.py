"""A small real index to serve, and a real uvicorn server on 127.0.0.1 to serve it with.

The index: 40 world renders indexed by the fixture CLIP itself (identity aligner, so its
vectors live in CLIP space and text queries work) with a ranking of colour and shape, plus
one symlink in the collection that points at an image outside it.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from compsearch.indexer.artifacts import encoder_for_build
from compsearch.indexer.build import IndexSettings, Indexer
from compsearch.indexer.world import get_split, write_split
from compsearch.indexer.world.render import render_image
from compsearch.mapping.align import align
from compsearch.mapping.models import load_model
from compsearch.mapping.properties import builtin_property
from compsearch.mapping.rank import rank
from compsearch.search.server.run import bind, server_config, url

IMAGES = 40
ESCAPE_KEY = "zz_escape.png"  # sorts last: the symlink that leads out of the collection


@dataclass
class ServedIndex:
    folder: Path  # the index directory
    collection: Path  # the folder that was indexed
    outside: Path  # an image outside the collection, which the escape symlink points at


@pytest.fixture(scope="session")
def served_index(fixture_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> ServedIndex:
    root = tmp_path_factory.mktemp("served")
    write_split(root / "world", get_split("train"), IMAGES, size=64, progress=False)
    collection = root / "world" / "train"
    outside = root / "private" / "secret.png"
    outside.parent.mkdir()
    render_image(get_split("test").item(0), size=64).save(outside)
    (collection / ESCAPE_KEY).symlink_to(outside)
    clip = load_model(f"local-dir:{fixture_clip}")
    aligner = align(clip, clip, collection, root / "identity", progress=False)
    ranking = rank(clip, aligner, collection, [builtin_property("colour"), builtin_property("shape")],
                   encode_text=clip.encode_text, aligner_path=root / "identity.safetensors")
    folder = root / "index"
    built = encoder_for_build(clip, folder, root / "identity.safetensors", ranking.save(root / "ranking.json"))
    Indexer(folder, built.encoder, IndexSettings(batch_size=16, workers=0, chunk_size=16, progress=False),
            built.provenance).run(collection)
    return ServedIndex(folder, collection, outside)


@contextmanager
def running(app: FastAPI, **config: float) -> Iterator[str]:
    """``app`` served by uvicorn on a free port of 127.0.0.1 in a thread, as ``compsearch
    serve`` serves it (``config``: :func:`server_config`'s timeouts); yields its URL
    (``http://127.0.0.1:PORT/``) and stops the server on exit."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(server_config(app, "warning", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
