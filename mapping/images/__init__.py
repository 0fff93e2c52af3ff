"""The one image-input layer: sources that list images (:mod:`.sources`), robust decoding
(:mod:`.decode`), batches decoded in workers (:mod:`.loader`) and probe sets read with
the skip policy (:mod:`.probe`). Probe sets and collections, the CLI and the server all
read images through it.

Names load on first use (:mod:`compsearch.mapping.lazy`): the loader imports torch, and what
only reads files or their facts (an id query, ``compsearch info``) must not pay for it."""
from __future__ import annotations

from compsearch.mapping.lazy import lazy_attributes

_EXPORTS = {  # exported name -> submodule defining it
    "decode_image": "decode", "read_image": "decode", "read_image_bytes": "decode", "to_rgb": "decode",
    "DEFAULT_CHUNK_SIZE": "loader", "Batch": "loader", "iter_batches": "loader", "iter_unit_batches": "loader",
    "preprocess_batch": "loader",
    "probe_batches": "probe",
    "IMAGE_SUFFIXES": "sources", "FolderSource": "sources", "ImageRecord": "sources", "ImageSource": "sources",
    "ListFileSource": "sources", "MemorySource": "sources", "PathListSource": "sources", "SourceSpec": "sources",
    "TableSource": "sources", "collection_root": "sources", "open_source": "sources",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_attributes(__name__, _EXPORTS)
