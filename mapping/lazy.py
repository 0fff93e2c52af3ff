"""Package attributes imported on first use (PEP 562), so that importing a light module of a
package does not import the package's heavy ones (torch, pyarrow) with it: the command line
reads defaults and choices from packages whose other modules it needs only when a command runs."""
from __future__ import annotations

import importlib
from collections.abc import Callable


# Annotated without typing.Any: this module runs on every start of the command line.
def lazy_attributes(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: ``exports`` maps each name to the submodule
    (relative to ``package``) that defines it. No name may be spelled like a submodule: once
    that submodule is imported, the package attribute would be the module."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__
