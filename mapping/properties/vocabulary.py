"""Properties described in words: the built-in vocabularies (YAML beside this module) and
user-defined ones from a file or the command line."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from compsearch.mapping.errors import CompsearchError

DATA_DIR = Path(__file__).parent
TEMPLATES_FILE = DATA_DIR / "templates.yaml"
PLACEHOLDER = "{}"


class PropertyError(CompsearchError):
    """A property that is unknown or malformed."""


@cache
def default_templates() -> tuple[str, ...]:
    return tuple(yaml.safe_load(TEMPLATES_FILE.read_text())["templates"])


@dataclass(frozen=True)
class Property:
    """A property ``name`` with descriptions s_1..s_k and the prompt templates they fill."""

    name: str
    descriptions: tuple[str, ...]
    templates: tuple[str, ...] = field(default_factory=default_templates)

    def __post_init__(self) -> None:
        if not self.descriptions:
            raise PropertyError(f"property {self.name!r} has no descriptions", "give at least one")
        bad = [template for template in self.templates if template.count(PLACEHOLDER) != 1]
        if bad or not self.templates:
            raise PropertyError(
                f"property {self.name!r}: every template needs exactly one '{{}}' (got {bad or 'none'})",
                'write templates like "a photo of {}."',
            )

    def prompts(self, description: str) -> list[str]:
        return [template.replace(PLACEHOLDER, description) for template in self.templates]


def _from_mapping(name: str, entry: object, source: str) -> Property:
    """An entry of a vocabulary file: a list of descriptions, or {descriptions, templates}."""
    if isinstance(entry, list):
        entry = {"descriptions": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("descriptions"), list):
        raise PropertyError(
            f"property {name!r} in {source} is neither a list of descriptions nor has a 'descriptions' list",
            "write `NAME: [desc1, desc2]` or `NAME: {descriptions: [...], templates: [...]}`",
        )
    templates = entry.get("templates")
    return Property(
        name,
        tuple(str(d) for d in entry["descriptions"]),
        tuple(templates) if templates else default_templates(),
    )


@cache
def _builtin() -> dict[str, Property]:
    found: dict[str, Property] = {}
    for path in sorted(DATA_DIR.glob("*.yaml")):
        if path == TEMPLATES_FILE:
            continue
        data = yaml.safe_load(path.read_text())
        prop = _from_mapping(data["name"], data, path.name)
        for key in [prop.name, *data.get("aliases", [])]:
            found[key] = prop
    return found


def builtin_property_names() -> list[str]:
    """The canonical names of the built-in properties (aliases left out)."""
    return sorted({prop.name for prop in _builtin().values()})


def builtin_property(name: str) -> Property:
    try:
        return _builtin()[name]
    except KeyError:
        raise PropertyError(
            f"no built-in property named {name!r}",
            f"use one of {', '.join(builtin_property_names())}, or define it: --property {name}=desc1,desc2",
        ) from None


def templates_for(property_name: str) -> list[str]:
    """Prompt templates for text queries on a property the ranking kept none for (examples, or
    an older ranking): the built-in ones, else the defaults."""
    try:
        return list(builtin_property(property_name).templates)
    except PropertyError:
        return list(default_templates())


def load_property_file(path: str | Path) -> list[Property]:
    """Properties from a YAML or JSON file mapping each name to its descriptions (a list) or to
    ``{descriptions: [...], templates: [...]}``."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except OSError as error:
        raise PropertyError(f"cannot read property file {path} ({error})", "check the path") from error
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise PropertyError(f"property file {path} is not valid {path.suffix[1:] or 'YAML'}: {error}",
                            "fix its syntax") from error
    if not isinstance(data, dict) or not data:
        raise PropertyError(f"property file {path} holds no properties", "write `NAME: [desc1, desc2]` entries")
    return [_from_mapping(str(name), entry, path.name) for name, entry in data.items()]


def parse_property(option: str) -> list[Property]:
    """One ``--property`` value: a built-in name, ``name=desc1,desc2``, or a YAML/JSON file."""
    if "=" in option:
        name, _, descriptions = option.partition("=")
        values = tuple(d.strip() for d in descriptions.split(",") if d.strip())
        if not name.strip():
            raise PropertyError(f"--property {option!r} has no name", "write --property NAME=desc1,desc2")
        return [Property(name.strip(), values)]
    if Path(option).suffix in {".yaml", ".yml", ".json"}:
        return load_property_file(option)
    return [builtin_property(option)]


def resolve_properties(options: list[str]) -> list[Property]:
    """The properties named by ``--property`` options (all built-ins when none), unique by name."""
    properties = [prop for option in options for prop in parse_property(option)] if options else [
        builtin_property(name) for name in builtin_property_names()
    ]
    names = [prop.name for prop in properties]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PropertyError(f"property {', '.join(duplicates)} is given more than once", "name each property once")
    return properties
