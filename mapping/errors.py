"""The one exception family for user-facing failures.

Every error a user can cause (bad file, unknown model, missing weights, mismatched
artifacts, malformed query) is a :class:`CompsearchError` carrying what went wrong and
what to do about it. The CLI prints it as one line and exits non-zero; the API raises it.
Input that is accepted but likely a mistake, or work done only in part (images skipped), gets
a warning instead, through :func:`warn`: the one way warnings go out.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (checkers honour the name)
if TYPE_CHECKING:
    import logging


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


def warnings_logger() -> logging.Logger:
    """The ``compsearch`` logger :func:`warn` writes to. A function, so that importing this
    module does not import logging (~5 ms of a server query's 50 ms from the shell)."""
    import logging

    return logging.getLogger("compsearch")


def reason(error: BaseException) -> str:
    """An exception's first line (or its type, when it says nothing): why, in a one-line message."""
    return (str(error).splitlines() or [type(error).__name__])[0]


def warn(problem: str, hint: str | None = None) -> None:
    """Warn that ``problem`` (and what to do: ``hint``) as a record of the ``compsearch`` logger.

    Logging rather than :mod:`warnings`, so a server's and a library caller's warnings go where
    their logging sends them, and none is dropped as a repeat. The CLI prints each as one
    ``warning: …`` line on stderr; with no logging set up, Python prints the bare line there."""
    warnings_logger().warning(f"{problem} — {hint}" if hint else problem)


ENOUGH_IMAGES = 50  # fewer, and correlations, variances and cosines over them are mostly noise


def warn_if_few_images(count: int, purpose: str, option: str, enough: int = ENOUGH_IMAGES) -> None:
    """A warning when ``count`` images are too few for ``purpose`` (they come from ``option``)."""
    if count < enough:
        warn(f"{purpose} on only {count} image{'s' if count != 1 else ''}: with fewer than {enough} "
             "the figure is mostly noise", f"give more images to {option} (hundreds are better)")
