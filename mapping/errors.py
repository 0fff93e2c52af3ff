"""The one exception family for user-facing failures.

Every error a user can cause (bad file, unknown model, missing weights, mismatched
artifacts, malformed query) is a :class:`CompsearchError` carrying what went wrong and
what to do about it. The CLI prints it as one line and exits non-zero; the API raises it.
"""
from __future__ import annotations


class CompsearchError(Exception):
    """A failure the user can fix: ``problem`` says what went wrong, ``hint`` what to do."""

    def __init__(self, problem: str, hint: str | None = None) -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(f"{problem} — {hint}" if hint else problem)


class ModelLoadError(CompsearchError):
    """A model name that is unknown, or weights that cannot be found or loaded."""


class UnsupportedModelError(CompsearchError):
    """A model whose architecture has no decomposition adapter."""


class ImageReadError(CompsearchError):
    """An image file that is missing, truncated or not an image."""


class Interrupted(CompsearchError):
    """A run stopped by the user (Ctrl-C) after keeping its completed work: ``problem`` says
    what was kept, ``hint`` how to resume."""
