"""``--copy-to`` / ``--link-to``: a search's results put in a folder, in rank order, to take
elsewhere (a viewer, an editor, another tool)."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from compsearch.mapping.errors import CompsearchError


@dataclass
class Exported:
    folder: Path
    written: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # results whose file is gone (or never had one)


def export_results(document: dict, folder: str | Path, link: bool = False) -> Exported:
    """Copy (or symlink, ``link``) the file of each result in ``document`` (a search's JSON) into ``folder`` as ``RANK-NAME``, so the
    folder sorts in rank order and two files of one name do not clash. A result whose file is
    gone is listed in ``missing``; files already in ``folder`` under other names are kept."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise CompsearchError(f"{folder} is a file", "give a folder to put the results in")
    folder.mkdir(parents=True, exist_ok=True)
    exported = Exported(folder)
    results = document["results"]
    width = len(str(max((result["rank"] for result in results), default=1)))
    for result in results:
        source = Path(result["path"]) if result["path"] else None
        if source is None or not source.is_file():
            exported.missing.append(result["path"] or result["key"])
            continue
        target = folder / f"{result['rank']:0{width}d}-{source.name}"
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.unlink(missing_ok=True)
        if link:
            temporary.symlink_to(source.resolve())
        else:
            shutil.copy2(source, temporary)
        os.replace(temporary, target)
        exported.written.append(target)
    return exported
