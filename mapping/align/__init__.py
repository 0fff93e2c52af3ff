"""CompAlign: map each component's contribution into a CLIP embedding space (DESIGN.md §4).

Pure functions on tensors (:mod:`~mapping.align.aligner`, :mod:`~mapping.align.train`),
the row-aligned feature cache (:mod:`~mapping.align.cache`), persistence
(:mod:`~mapping.align.persist`) and the whole stage for files (:func:`align`).
"""
from mapping.align.aligner import Aligner, AlignerMeta, alignment_loss, mapped_sum, orthogonality_penalty
from mapping.align.persist import AlignerMismatchError, check_aligner, load_aligner, save_aligner
from mapping.align.run import align, is_same_model
from mapping.align.train import TensorSource, TrainResult, TrainSettings, train_aligner

__all__ = [
    "Aligner",
    "AlignerMeta",
    "AlignerMismatchError",
    "TensorSource",
    "TrainResult",
    "TrainSettings",
    "align",
    "alignment_loss",
    "check_aligner",
    "is_same_model",
    "load_aligner",
    "mapped_sum",
    "orthogonality_penalty",
    "save_aligner",
    "train_aligner",
]
