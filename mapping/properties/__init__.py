"""Properties to score components for: words (built-in YAML vocabularies beside this
module, or user-defined) turned into a CLIP text subspace, or labelled example images."""
from compsearch.mapping.properties.examples import ExampleProperty, load_examples
from compsearch.mapping.properties.text import description_embeddings, orthonormal_basis, property_basis
from compsearch.mapping.properties.vocabulary import (
    Property,
    PropertyError,
    builtin_property,
    builtin_property_names,
    load_property_file,
    parse_property,
    resolve_properties,
)

__all__ = [
    "ExampleProperty",
    "Property",
    "PropertyError",
    "builtin_property",
    "builtin_property_names",
    "description_embeddings",
    "load_examples",
    "load_property_file",
    "orthonormal_basis",
    "parse_property",
    "property_basis",
    "resolve_properties",
]
