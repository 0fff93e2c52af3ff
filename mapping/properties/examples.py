"""Properties defined by labelled example images instead of words: one folder per value.

``DIR/striped/*.jpg, DIR/plain/*.jpg, …`` defines the property ``DIR``'s name with the
values ``striped``, ``plain``, …; no text encoder is involved.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mapping.images import IMAGE_SUFFIXES, FolderSource
from mapping.properties.vocabulary import PropertyError


@dataclass(frozen=True)
class ExampleProperty:
    name: str
    values: tuple[str, ...]  # the folder names, sorted
    images: tuple[Path, ...]
    labels: tuple[int, ...]  # per image, an index into ``values``


def load_examples(folder: str | Path, name: str | None = None) -> ExampleProperty:
    """The example property in ``folder`` (named after it unless ``name`` is given)."""
    folder = Path(folder).expanduser()
    values = sorted(child.name for child in folder.iterdir() if child.is_dir()) if folder.is_dir() else []
    if len(values) < 2:
        raise PropertyError(
            f"{folder} needs at least two sub-folders of example images, one per value (found {len(values)})",
            "lay it out as DIR/VALUE/image.jpg, e.g. DIR/striped/…, DIR/plain/…",
        )
    images: list[Path] = []
    labels: list[int] = []
    for label, value in enumerate(values):
        found = [record.path for record in FolderSource(folder / value).records()]
        if not found:
            raise PropertyError(f"no images in {folder / value}",
                                f"put files with one of {', '.join(sorted(IMAGE_SUFFIXES))} there")
        images += found
        labels += [label] * len(found)
    return ExampleProperty(name or folder.name, tuple(values), tuple(images), tuple(labels))
