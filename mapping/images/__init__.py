"""The one image-input layer: sources that list images (:mod:`.sources`), robust decoding
(:mod:`.decode`), batches decoded in workers (:mod:`.loader`) and probe sets read with
the skip policy (:mod:`.probe`). Probe sets and collections, the CLI and the server all
read images through it."""
from compsearch.mapping.images.decode import decode_image, read_image, read_image_bytes, to_rgb
from compsearch.mapping.images.loader import DEFAULT_CHUNK_SIZE, Batch, iter_batches, iter_unit_batches, preprocess_batch
from compsearch.mapping.images.probe import probe_batches
from compsearch.mapping.images.sources import (
    IMAGE_SUFFIXES,
    FolderSource,
    ImageRecord,
    ImageSource,
    ListFileSource,
    MemorySource,
    PathListSource,
    SourceSpec,
    TableSource,
    collection_root,
    open_source,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "IMAGE_SUFFIXES",
    "Batch",
    "FolderSource",
    "ImageRecord",
    "ImageSource",
    "ListFileSource",
    "MemorySource",
    "PathListSource",
    "SourceSpec",
    "TableSource",
    "collection_root",
    "decode_image",
    "iter_batches",
    "iter_unit_batches",
    "open_source",
    "preprocess_batch",
    "probe_batches",
    "read_image",
    "read_image_bytes",
    "to_rgb",
]
