"""The ``compsearch`` console script: one click group, verb subcommands.

Commands are imported lazily so ``compsearch --help`` stays fast (torch is heavy) and a
command's import cost is paid only when it runs. Each command module is thin: parse,
call one library function, print.
"""
from __future__ import annotations

import importlib
import sys

import click

from mapping.errors import CompsearchError

# command name -> "module:attribute" of a click.Command; keep sorted by pipeline stage.
COMMANDS: dict[str, str] = {
    "demo": "mapping.commands.demo:demo",
    "decompose": "mapping.commands.decompose:decompose_command",
    "align": "mapping.commands.align:align_command",
    "rank": "mapping.commands.rank:rank_command",
    "describe": "mapping.commands.describe:describe_command",
    "explain": "mapping.commands.explain:explain_command",
    "debias": "mapping.commands.debias:debias_command",
    "world": "indexer.commands.world:world",
    "index": "indexer.commands.index:index_command",
    "info": "indexer.commands.info:info_command",
    "search": "search.commands.search:search_command",
    "serve": "search.commands.serve:serve_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module_name), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compsearch")
def cli() -> None:
    """Property-specific image search on the components of Vision Transformers.

    Decompose a ViT's image representation into attention heads and MLPs, align them
    to CLIP space, rank them per property (colour, texture, shape, …), and search an
    image collection by one property at a time.
    """


def main() -> None:
    """Entry point: turns a CompsearchError into one line on stderr and exit code 2."""
    try:
        cli.main(standalone_mode=False)
    except CompsearchError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
