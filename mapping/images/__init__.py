"""The one image-input layer: sources that list images (:mod:`.sources`), robust decoding
(:mod:`.decode`) and batches decoded in workers (:mod:`.loader`). Probe sets and
collections, the CLI and the server all read images through it."""
from mapping.images.decode import decode_image, read_image, read_image_bytes
from mapping.images.loader import DEFAULT_CHUNK_SIZE, Batch, iter_batches, preprocess_batch
from mapping.images.sources import (
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
    "open_source",
    "preprocess_batch",
    "read_image",
    "read_image_bytes",
]
