"""CompAlign: map each component's contribution into a CLIP embedding space (docs/architecture.md, Alignment).

Pure functions on tensors (:mod:`~mapping.align.aligner`, :mod:`~mapping.align.train`),
the row-aligned feature cache (:mod:`~mapping.align.cache`), persistence
(:mod:`~mapping.align.persist`) and the whole stage for files (:func:`align`).

The torch-free modules (:mod:`~mapping.align.settings`, :mod:`~mapping.align.files`) are
imported at once; the others on first use of a name below (PEP 562), so the command line
reads the training defaults and checks aligner paths without importing torch.
"""
from __future__ import annotations

from compsearch.mapping.align.files import aligner_paths
from compsearch.mapping.align.settings import TrainSettings
from compsearch.mapping.lazy import lazy_attributes

_LAZY = {  # exported name -> submodule defining it
    "Aligner": "aligner",
    "AlignerMeta": "aligner",
    "alignment_loss": "aligner",
    "mapped_sum": "aligner",
    "orthogonality_penalty": "aligner",
    "check_aligner_fit": "fit",
    "probe_cosine": "fit",
    "AlignerMismatchError": "persist",
    "check_aligner": "persist",
    "load_aligner": "persist",
    "save_aligner": "persist",
    "align": "run",
    "is_same_model": "run",
    "TensorSource": "train",
    "TrainResult": "train",
    "train_aligner": "train",
}

__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = ["TrainSettings", "aligner_paths", *_LAZY]
