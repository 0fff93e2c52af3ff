"""A click-free reader of one command's arguments, for the one command that must start in
milliseconds: ``compsearch search http://…`` (importing click alone takes ~15 ms of a 50 ms
budget). It reads the same option table, ``(flags, click settings)`` pairs, that the click
command is built from, so the two cannot drift; it understands the common forms only
(``--name value``, ``--name=value``, ``-k value``, flags, repeated options, an envvar) and
answers ``None`` for anything else — click then parses those arguments and reports any
error as always."""
from __future__ import annotations

import os

Option = tuple[tuple[str, ...], dict]  # click.option's flags (and dest), and its settings


def dest(flags: tuple[str, ...]) -> str:
    """The parameter name click gives an option: the non-dash entry, else the longest flag."""
    named = [flag for flag in flags if not flag.startswith("-")]
    return named[0] if named else max(flags, key=len).lstrip("-").replace("-", "_")


def _convert(raw: str, settings: dict) -> object:
    """``raw`` as click would convert it; ``ValueError`` where click would refuse it."""
    if "choices" in settings and raw not in settings["choices"]:
        raise ValueError(raw)
    return settings.get("type", str)(raw)


def parse(options: tuple[Option, ...], arguments: list[str], argument: str) -> dict | None:
    """The parameters click would pass the command for ``arguments`` (one positional, named
    ``argument``), or ``None`` where this reader is unsure: an unknown or clustered option, a
    missing or invalid value, ``--help``, a second positional."""
    by_flag: dict[str, tuple[str, dict]] = {}
    values: dict[str, object] = {argument: None}
    for flags, settings in options:
        name = dest(flags)
        by_flag.update((flag, (name, settings)) for flag in flags if flag.startswith("-"))
        values[name] = [] if settings.get("multiple") else False if settings.get("is_flag") else settings.get("default")
    given = set()
    position = 0
    try:
        while position < len(arguments):
            word = arguments[position]
            position += 1
            if word == "-" or not word.startswith("-"):
                if values[argument] is not None:
                    return None
                values[argument] = word
                continue
            flag, equals, inline = word.partition("=") if word.startswith("--") else (word, "", "")
            if flag not in by_flag:
                return None
            name, settings = by_flag[flag]
            given.add(name)
            if settings.get("is_flag"):
                if equals:
                    return None
                values[name] = True
                continue
            if not equals:
                if position == len(arguments):
                    return None
                inline, position = arguments[position], position + 1  # click takes the next word, dashes or not
            value = _convert(inline, settings)
            if settings.get("multiple"):
                values[name].append(value)
            else:
                values[name] = value
        for flags, settings in options:  # click reads an envvar only for an option not given (and not empty)
            name = dest(flags)
            if name not in given and os.environ.get(settings.get("envvar") or "", ""):
                values[name] = _convert(os.environ[settings["envvar"]], settings)
    except ValueError:
        return None
    if values[argument] is None:
        return None
    return {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}
