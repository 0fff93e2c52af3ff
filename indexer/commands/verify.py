"""``compsearch verify``: every file of an index directory against its recorded checksum."""
from __future__ import annotations

from pathlib import Path

import click

from compsearch.mapping.commands.options import emit, json_option


@click.command("verify")
@click.argument("index_dir", type=click.Path(path_type=Path, file_okay=False))
@json_option
def verify_command(index_dir: Path, as_json: bool) -> None:
    """Check every file of the index in INDEX_DIR (shard parts, FAISS files) against the size,
    row or vector count and sha256 its manifest records. Sound: one line, exit 0. Damaged:
    each damaged file with what is wrong and what repairs it, exit 2."""
    from compsearch.indexer.integrity import DamagedIndexError, full_check

    report = full_check(index_dir)
    folder = Path(report.folder)
    emit(report, as_json, lambda r: "\n".join([r.summary(), *(
        f"  {d.file}: {d.problem} — {d.repair(folder)}" for d in r.damage)]))
    if report.damage:
        raise DamagedIndexError(f"{len(report.damage)} damaged files in {folder}",
                                f"`compsearch index IMAGES --out {folder} --repair`, see each file above")
