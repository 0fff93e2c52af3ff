"""Where an aligner lives on disk: its two files, named without importing torch (the command
line checks them before it loads any model)."""
from __future__ import annotations

from pathlib import Path


def aligner_paths(path: str | Path) -> tuple[Path, Path]:
    """``(tensors, sidecar)`` for ``path`` given with or without the ``.safetensors`` suffix."""
    path = Path(path).expanduser()
    tensors = path if path.suffix == ".safetensors" else path.with_name(path.name + ".safetensors")
    return tensors, tensors.with_suffix(".json")
