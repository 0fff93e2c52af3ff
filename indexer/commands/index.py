"""``compsearch index``: one pass over an image collection into per-property FAISS indexes."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.commands.options import aligner_option, clip_weights_option, emit, json_option, model_options

if TYPE_CHECKING:
    from compsearch.indexer.build import IndexSummary


def _parse_shard(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int]:
    if value is None:
        return 0, 1
    try:
        shard, shards = (int(part) for part in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not I/N (e.g. 0/4)") from None
    if not 0 <= shard < shards:
        raise click.BadParameter(f"{value}: I must be 0 to N-1 (the shards of 4 are 0/4 … 3/4)")
    return shard, shards


def _parse_auto_count(_ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    """``auto`` → None (chosen from the cores), otherwise a count of at least the option's minimum."""
    if value == "auto":
        return None
    least = 0 if param.name == "workers" else 1
    if not value.isdigit() or int(value) < least:
        raise click.BadParameter(f"{value!r} is not auto or a whole number ≥ {least}")
    return int(value)


@click.command("index")
@click.argument("images", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Index directory to create (or resume, or --append to).")
@model_options
@aligner_option(purpose=": vectors in CLIP space (text queries need it); without one, vectors stay in the "
                        "model's own space")
@click.option("--ranking", "ranking_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Ranking from `compsearch rank`: one index per property (its top-k components summed).")
@click.option("--property", "property_names", multiple=True, metavar="NAME|NAME=desc1,desc2|FILE",
              help="With --ranking: index only these of its properties (default: all). Without: rank these "
                   "properties on the fly on --sample images of the collection (needs --clip, and --aligner "
                   "unless --model is that CLIP).")
@click.option("--clip", "clip_name", help="open_clip model whose text encoder scores --property (on-the-fly ranking).")
@clip_weights_option
@click.option("--sample", default=1000, show_default=True, type=click.IntRange(min=2),
              help="Images of the collection the on-the-fly ranking is scored on.")
@click.option("--index", "index_type", default="auto", show_default=True,
              help="faiss index_factory string (Flat, HNSW32, IVF4096,Flat, IVF4096,PQ64) or auto "
                   "(from the collection's size and --memory).")
@click.option("--memory", "memory_gb", type=float, help="Memory budget of each FAISS index in GiB (default: half the RAM).")
@click.option("--workers", default="auto", show_default=True, callback=_parse_auto_count,
              help="Decoding processes beside the model (0: decode in the main process; auto: from the "
                   "cores, one on a CPU so decoding overlaps the model).")
@click.option("--threads", default="auto", show_default=True, callback=_parse_auto_count,
              help="The model's torch threads (auto: every usable core on a CPU).")
@click.option("--chunk-size", default=1024, show_default=True, type=click.IntRange(min=1),
              help="Images per shard: the most an interruption can lose.")
@click.option("--gpu-jpeg/--pil-jpeg", "jpeg_on_device", default=True, show_default=True,
              help="On a GPU, decode JPEGs there (nvjpeg) instead of with PIL in the workers.")
@click.option("--shard", callback=_parse_shard, metavar="I/N",
              help="Take share I of N (0 <= I < N) of the collection's chunks, so N processes (GPUs, or "
                   "machines sharing --out) split one run; then run the same command without --shard "
                   "to build the FAISS indexes.")
@click.option("--backend", type=click.Choice(["process", "ray"]), default="process", show_default=True,
              help="Who runs decoding, the model and writing: this process, or Ray Data on a cluster "
                   "(decode tasks, one model actor per GPU or a CPU pool, write tasks; pip install 'compsearch[ray]').")
@click.option("--address", help="With --backend ray: the cluster (auto, or HOST:PORT of its head); default: "
                                "$RAY_ADDRESS, else a local cluster started for this run.")
@click.option("--store", "store", default="fp16", show_default=True, type=click.Choice(["fp16", "fp32", "none"]),
              help="Keep each image's components in compact exact form beside the shards (DIR/store), so "
                   "`add-property` and `reindex` need no pass over the images; none: keep nothing.")
@click.option("--append", "mode", flag_value="append", help="Only add the files not indexed yet (a plain rerun also removes, re-paths and re-encodes).")
@click.option("--overwrite", "mode", flag_value="overwrite", help="Delete the index in --out and rebuild it.")
@click.option("--repair", "mode", flag_value="repair",
              help="Repair the index in --out from its shards (see `compsearch verify`): rebuild damaged FAISS "
                   "files, remove damaged shard parts (an --append run then encodes their images again). "
                   "Loads no model.")
@click.option("--dry-run", is_flag=True, help="Print what a run would add, remove, move and re-encode; change nothing.")
@json_option
def index_command(images: Path, out_dir: Path, model_name: str, weights: Path | None, random_init: bool,
                  aligner_path: Path | None, ranking_path: Path | None, property_names: tuple[str, ...],
                  clip_name: str | None, clip_weights: Path | None, sample: int,
                  index_type: str, memory_gb: float | None, batch_size: int, workers: int | None,
                  threads: int | None, chunk_size: int,
                  jpeg_on_device: bool, device: str, shard: tuple[int, int], backend: str, address: str | None,
                  store: str, mode: str | None, dry_run: bool, as_json: bool) -> None:
    """Index the images in IMAGES (a folder, a text file of paths, or a Parquet/CSV file with a
    `path` column whose other columns are kept as metadata) into the directory --out.

    \b
    Every image is decomposed once; per property of --ranking, the sum of its top-k
    components goes into DIR/<property>.faiss, the whole representation into DIR/full.faiss;
    metadata and vectors go into Parquet shards (DIR/shards). Unreadable files are skipped
    and listed with their reason, identical files indexed once. Interrupted, or the folder
    changed? Run the same command again: it adds new files, removes deleted ones, re-paths
    moved ones (no re-encoding) and re-encodes changed ones (--append: only adds).

    \b
    Example:
      compsearch index ~/photos --out photos.index --model deit_base_patch16_224 \\
          --aligner deit.aligner --ranking ranking.json
    """
    from compsearch.indexer.api import build_index, plan_index
    from compsearch.indexer.build import IndexSettings

    if address and backend != "ray":
        raise CompsearchError("--address names a Ray cluster, and this run is not on Ray", "add --backend ray")

    if dry_run:
        emit(plan_index(images, out_dir, mode or "resume").report(), as_json, format_plan)
        return

    settings = IndexSettings(
        index=index_type, batch_size=batch_size, workers=workers, threads=threads, chunk_size=chunk_size,
        memory_budget=int(memory_gb * (1 << 30)) if memory_gb else None, progress=not as_json,
        jpeg_on_device=jpeg_on_device, shard=shard, backend=backend, address=address,
        store=None if store == "none" else store,
    )
    if mode == "repair":
        from compsearch.indexer.repair import repair_index

        emit(repair_index(out_dir, settings), as_json, lambda report: report.summary())
        return
    summary = build_index(images, out_dir, model_name, weights=weights, pretrained=not random_init,
                          aligner=aligner_path, ranking=ranking_path, properties=list(property_names) or None,
                          settings=settings, mode=mode or "resume", device=device, clip=clip_name,
                          clip_weights=clip_weights, sample=sample)
    emit(summary, as_json, format_summary)


def format_plan(report: dict[str, Any]) -> str:
    lines = ["A run would find: " + ", ".join(f"{count} {name}" for name, count in report["counts"].items())]
    for kind, paths in report["examples"].items():
        lines += [f"  {kind}: {path}" for path in paths]
    return "\n".join(lines)


def format_summary(summary: IndexSummary) -> str:
    if summary.shard:
        return (f"{summary.folder}: shard {summary.shard} done ({summary.added} added, {summary.skipped} skipped, "
                f"{summary.duplicates} duplicates) in {summary.seconds:.1f} s; chunks of the run still to do: "
                f"{summary.chunks_left}.\nWhen every shard has finished, run the same command without --shard: "
                "it builds the FAISS indexes.")
    return "\n".join([
        f"{summary.folder}: {summary.images} images indexed (this run: {summary.added} added, {summary.removed} "
        f"removed, {summary.moved} moved, {summary.changed} changed, {summary.unchanged + summary.already_indexed} "
        f"unchanged, {summary.skipped} skipped, {summary.duplicates} duplicates) "
        f"in {summary.seconds:.1f} s" + (f" ({summary.images_per_second:.1f} images/s)" if summary.added else ""),
        *(f"  {name}.faiss  {factory}" for name, factory in summary.indexes.items()),
        f"Next: compsearch info {summary.folder}",
    ])
