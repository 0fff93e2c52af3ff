"""Properties to score components for: words (built-in YAML vocabularies beside this
module, or user-defined) turned into a CLIP text subspace, or labelled example images.

Names load on first use (:mod:`compsearch.mapping.lazy`): the subspaces and examples need
torch, and a text query through the ONNX text tower reads vocabularies and prompts only."""
from __future__ import annotations

from compsearch.mapping.lazy import lazy_attributes

_EXPORTS = {  # exported name -> submodule defining it
    "ExampleProperty": "examples", "load_examples": "examples",
    "description_embeddings": "text", "orthonormal_basis": "text", "property_basis": "text",
    "Property": "vocabulary", "PropertyError": "vocabulary", "builtin_property": "vocabulary",
    "builtin_property_names": "vocabulary", "load_property_file": "vocabulary", "parse_property": "vocabulary",
    "resolve_properties": "vocabulary",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_attributes(__name__, _EXPORTS)
