"""The console script ``compsearch``.

A query of a running server (``compsearch search http://HOST:PORT …``) is answered here
without importing click: its options are read by :mod:`.commands.fast_argv` from the table
the click command is built from, and run by the command's own body, so from the shell it
costs Python's start, a socket round trip and little else (the target is 50 ms). Every other
command, and any arguments that reader is unsure of, go to the click group (:mod:`.cli`).
"""
from __future__ import annotations

import os
import sys

from compsearch.mapping.errors import CompsearchError


def _answered_remotely(arguments: list[str]) -> bool:
    """Runs ``compsearch search URL …`` when it is one and its arguments read plainly."""
    if arguments[:1] != ["search"]:
        return False
    from compsearch.search.remote import is_url

    if not any(map(is_url, arguments)):
        return False
    from compsearch.search.commands.fast_argv import parse
    from compsearch.search.commands.search_options import SEARCH_OPTIONS
    from compsearch.search.commands.search_run import run_search

    parameters = parse(SEARCH_OPTIONS, arguments[1:], "index_dir")
    if parameters is None or not is_url(parameters["index_dir"]):
        return False
    run_search(**parameters)
    return True


def main() -> None:
    """Entry point: a CompsearchError becomes one line on stderr and exit code 2, Ctrl-C one
    line and exit code 1; a reader that stops reading (``| head``) ends the command quietly,
    as it does any Unix tool."""
    try:
        if not _answered_remotely(sys.argv[1:]):
            from compsearch.search.cli import main as click_main

            click_main()
        sys.stdout.flush()  # here, so a closed pipe is met inside the handler below
    except CompsearchError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C while a server answers (the click group says the same for its commands)
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit must not fail
        sys.exit(1)
