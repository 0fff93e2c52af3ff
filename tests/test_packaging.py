"""The installed package: one namespace, ``compsearch``, and nothing generic at the top level
(``mapping`` or ``indexer`` installed as they are would shadow other packages of those names)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ("compsearch", "mapping", "indexer", "search", "setup.py", "pyproject.toml", "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    source = tmp_path_factory.mktemp("source")
    for name in PACKAGED:  # a copy, so the build's own files stay out of the checkout
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                           if (ROOT / name).is_dir() else {}))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True)
    return zipfile.ZipFile(next(out.glob("compsearch-*.whl")))


def test_the_wheel_installs_only_the_compsearch_namespace(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"compsearch"}


def test_the_wheel_holds_every_part_with_its_data(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for part in ("mapping", "indexer", "search"):
        sources = {f"compsearch/{path.relative_to(ROOT).as_posix()}" for path in (ROOT / part).rglob("*.py")}
        assert sources <= names, sorted(sources - names)[:5]
    assert "compsearch/search/server/static/index.html" in names
    assert any(name.startswith("compsearch/mapping/properties/") and name.endswith(".yaml") for name in names)
    entry_points = wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "compsearch = compsearch.search.launch:main" in entry_points


def test_importing_compsearch_is_cheap_and_exposes_the_api() -> None:
    code = ("import sys, compsearch; compsearch.Term; heavy = [m for m in ('torch', 'faiss', 'timm', 'pyarrow') if m in sys.modules]; "
            "assert not heavy, heavy; assert callable(compsearch.open_index) and callable(compsearch.decompose); "
            "assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
