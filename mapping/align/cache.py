"""An on-disk, resumable cache of component contributions and CLIP targets, row-aligned.

Training an aligner runs over the same images for many epochs; the models run once. The
cache is a folder of shards plus ``manifest.json``:

- the manifest fixes *what* is cached (model, CLIP, their weights, first block: the
  ``key``) and the ordered image list; shard ``k`` holds rows ``k·shard_size …`` of it;
- each shard (safetensors) holds ``contributions`` (rows, components, d_model) and
  ``targets`` (rows, d_clip) computed from the same decoded images, and the image paths in
  its metadata, checked against the manifest on every read, so a contribution can never be
  paired with another image's target (the reference mixes two shuffled loaders);
- a shard is written to a temporary name and renamed, then recorded in the manifest, which
  is itself replaced atomically: an interrupted run leaves only complete shards, and the
  next run with the same key continues after the last one.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import safetensors.torch
import torch
from tqdm import tqdm

from mapping.errors import CompsearchError
from mapping.images.sources import IMAGE_SUFFIXES

FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# images -> (component names, contributions (rows, C, d_model), targets (rows, d_clip))
Encoder = Callable[[list[Path]], tuple[list[str], torch.Tensor, torch.Tensor]]
Batch = tuple[torch.Tensor, torch.Tensor]


def list_images(folder: str | Path) -> list[str]:
    """Image files under ``folder`` (recursively), as sorted paths relative to it."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CompsearchError(f"image folder {folder} does not exist", "pass a folder of image files")
    found = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )
    if not found:
        raise CompsearchError(
            f"no images in {folder}", f"put files with one of {', '.join(sorted(IMAGE_SUFFIXES))} there"
        )
    return found


def is_heldout(image: str, fraction: float) -> bool:
    """Whether ``image`` (a relative path) is held out: decided by a hash of the path alone,
    so the split is the same across runs, resumes and growing image sets."""
    digest = hashlib.sha256(image.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class FeatureCache:
    """A complete cache, read shard by shard (see the module docstring for the layout)."""

    def __init__(self, folder: Path, manifest: dict, heldout_fraction: float = 0.1) -> None:
        self.folder = folder
        self.manifest = manifest
        self.heldout_fraction = heldout_fraction

    @property
    def component_names(self) -> list[str]:
        return self.manifest["component_names"]

    @property
    def images(self) -> list[str]:
        return self.manifest["images"]

    @property
    def dims(self) -> tuple[int, int]:
        return self.manifest["model_dim"], self.manifest["clip_dim"]

    def read_shard(self, index: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """``(images, contributions, targets)`` of shard ``index``, checked row by row."""
        path = self.folder / self.manifest["shards"][index]
        with safetensors.safe_open(path, framework="pt") as shard:
            paths = json.loads(shard.metadata()["images"])
            contributions, targets = shard.get_tensor("contributions"), shard.get_tensor("targets")
        size = self.manifest["shard_size"]
        if paths != self.images[index * size:(index + 1) * size] or len(paths) != len(targets):
            raise CompsearchError(
                f"cache shard {path} does not hold the images its manifest lists there",
                f"delete {self.folder} and rebuild the cache",
            )
        return paths, contributions.float(), targets.float()

    def batches(self, batch_size: int, heldout: bool, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Training (``heldout=False``, shuffled when ``generator`` is given) or held-out rows
        (:func:`is_heldout` with ``heldout_fraction``).

        Shards are visited in a shuffled order and rows shuffled within each, so only one
        shard is in memory at a time whatever the size of the image set.
        """
        count = len(self.manifest["shards"])
        order = torch.randperm(count, generator=generator).tolist() if generator is not None else range(count)
        for index in order:
            paths, contributions, targets = self.read_shard(index)
            keep = torch.tensor([is_heldout(path, self.heldout_fraction) == heldout for path in paths], dtype=torch.bool)
            rows = keep.nonzero().squeeze(1)
            if generator is not None:
                rows = rows[torch.randperm(len(rows), generator=generator)]
            for start in range(0, len(rows), batch_size):
                chosen = rows[start:start + batch_size]
                yield contributions[chosen], targets[chosen]


def _write_manifest(folder: Path, manifest: dict) -> None:
    temporary = folder / f".{MANIFEST}.tmp"
    temporary.write_text(json.dumps(manifest))
    os.replace(temporary, folder / MANIFEST)


def _open_or_start(folder: Path, key: dict, images: list[str], shard_size: int) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        return {"format_version": FORMAT_VERSION, "key": key, "shard_size": shard_size,
                "images": images, "shards": []}
    manifest = json.loads(path.read_text())
    if manifest.get("key") != key or manifest.get("images") != images or manifest.get("shard_size") != shard_size:
        raise CompsearchError(
            f"the feature cache {folder} was built for other models, images or settings",
            "pass another --cache folder, or delete this one to rebuild it",
        )
    # Keep the completed prefix whose files are still there.
    present = []
    for name in manifest["shards"]:
        if not (folder / name).is_file():
            break
        present.append(name)
    manifest["shards"] = present
    return manifest


def build_cache(
    folder: str | Path,
    images_root: str | Path,
    images: Sequence[str],
    encode: Encoder,
    key: dict,
    shard_size: int = 512,
    heldout_fraction: float = 0.1,
    progress: bool = True,
) -> FeatureCache:
    """Cache ``encode`` of ``images`` (relative to ``images_root``) in ``folder``, resuming
    after the last complete shard of an earlier run with the same ``key``."""
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    images = list(images)
    manifest = _open_or_start(folder, key, images, shard_size)
    root = Path(images_root).expanduser()
    shard_count = -(-len(images) // shard_size)
    for index in tqdm(range(len(manifest["shards"]), shard_count), desc="caching features",
                      unit="shard", disable=not progress):
        rows = images[index * shard_size:(index + 1) * shard_size]
        names, contributions, targets = encode([root / row for row in rows])
        if "component_names" not in manifest:
            manifest.update(component_names=names, model_dim=contributions.shape[-1], clip_dim=targets.shape[-1])
        elif names != manifest["component_names"]:
            raise CompsearchError(f"the model's components changed while caching into {folder}",
                                  "delete the cache folder and rebuild it")
        name = f"shard-{index:05d}.safetensors"
        temporary = folder / f".{name}.tmp"
        safetensors.torch.save_file(
            {"contributions": contributions.float().contiguous(), "targets": targets.float().contiguous()},
            temporary, metadata={"images": json.dumps(rows)},
        )
        os.replace(temporary, folder / name)
        manifest["shards"].append(name)
        _write_manifest(folder, manifest)
    return FeatureCache(folder, manifest, heldout_fraction)
