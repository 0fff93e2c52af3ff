"""``compsearch index … --repair``: rebuild what the shards can rebuild, drop what they cannot.

A FAISS file is a function of the shards: a missing, truncated or foreign one is built again
from them. A shard part holds encoded images: nothing here can make it again without the
model, so a damaged or missing one is removed with its record, and the report says that an
``--append`` run of the same command encodes its images again (the files not in the index).
An index built before files were recorded gets its record written (checked first as far as
its manifest allows: the FAISS files' sizes and counts).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compsearch.indexer.finish import build_indexes, record_totals
from compsearch.indexer.integrity import check_files
from compsearch.indexer.lock import writing
from compsearch.indexer.settings import IndexSettings
from compsearch.indexer.store import SHARDS, IndexStore


@dataclass
class RepairReport:
    folder: str
    rebuilt: list[str]  # FAISS files built again
    removed: list[str]  # damaged parts removed: their images need an --append run
    recorded: int  # files in the new record

    def summary(self) -> str:
        if not self.rebuilt and not self.removed:
            return f"{self.folder}: nothing to repair ({self.recorded} files recorded and sound)"
        lines = [f"{self.folder}: rebuilt {len(self.rebuilt)} FAISS files from the shards, "
                 f"removed {len(self.removed)} damaged parts"]
        lines += [f"  removed {name}" for name in self.removed]
        if self.removed:
            lines.append(f"Next: compsearch index IMAGES --out {self.folder} --append (the same command as the build) "
                         "encodes the removed parts' images again")
        return "\n".join(lines)


def repair_index(folder: str | Path, settings: IndexSettings = IndexSettings()) -> RepairReport:
    """Repair the index directory ``folder`` (see the module docstring); no model is loaded."""
    store = IndexStore(folder)
    with writing(store.folder):
        manifest = store.read_manifest()
        damage = check_files(store, manifest, checksum=True)
        removed = [d.file for d in damage if not d.is_faiss]
        for name in removed:
            path = store.folder / name
            for beside in store.beside(path) if path.parent.name == SHARDS else []:
                beside.unlink()  # its store and vectors parts go with it (vectors parts stay one per shard)
            path.unlink(missing_ok=True)
        damaged = {d.file for d in damage}  # a removed part changes every FAISS file; else only the damaged
        stale = {name: entry.space for name, entry in manifest.indexes.items()
                 if removed or entry.file in damaged or damaged & set(entry.exact_files)}
        for name, space in stale.items():
            manifest.indexes.update(build_indexes(store, [name], space, settings))
        rebuilt = [manifest.indexes[name].file for name in stale]
        record_totals(store, manifest)
        return RepairReport(str(store.folder), rebuilt, removed, len(manifest.files or {}))
