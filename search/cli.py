"""The ``compsearch`` console script: one click group, verb subcommands.

Commands are listed in :data:`COMMANDS` with their one-line help, so ``compsearch --help``
imports none of them; a command's module is imported only when it runs or shows its own
``--help``, and imports the model libraries (torch, timm, open_clip) only inside its body.
Each command module is thin: parse, call one library function, print.
"""
from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import click

from compsearch.mapping.errors import warnings_logger


class Entry(NamedTuple):
    target: str  # "module:attribute" of the click.Command
    summary: str  # the line `compsearch --help` shows for it


# Sorted by the order the commands are used in (the group's help says so).
COMMANDS: dict[str, Entry] = {
    "demo": Entry("compsearch.search.commands.demo:demo_command", "Try it all offline: index a world, search by property."),
    "sample": Entry("compsearch.mapping.commands.sample:sample_command", "Decompose one drawn image with DeiT-tiny (no data needed)."),
    "world": Entry("compsearch.indexer.commands.world:world",
                   "The synthetic world and its fixture CLIP (offline)."),
    "decompose": Entry("compsearch.mapping.commands.decompose:decompose_command",
                       "Split images' representations into named components."),
    "align": Entry("compsearch.mapping.commands.align:align_command",
                   "Map each component into a CLIP's space (an aligner)."),
    "rank": Entry("compsearch.indexer.commands.rank:rank_command",
                  "Rank components per property; write the ranking JSON."),
    "describe": Entry("compsearch.mapping.commands.describe:describe_command",
                      "Describe attention heads in words (TextSpan)."),
    "explain": Entry("compsearch.mapping.commands.explain:explain_command",
                     "Token heatmaps of chosen components over images."),
    "debias": Entry("compsearch.mapping.commands.debias:debias_command",
                    "Mean-ablate the components that carry a spurious attribute."),
    "index": Entry("compsearch.indexer.commands.index:index_command",
                   "Index an image collection: one FAISS index per property."),
    "add-property": Entry("compsearch.indexer.commands.relearn:add_property_command",
                          "Index more properties from the component store."),
    "reindex": Entry("compsearch.indexer.commands.relearn:reindex_command",
                     "Rebuild property indexes: new k, ranking, aligner."),
    "info": Entry("compsearch.indexer.commands.info:info_command", "Describe an index directory."),
    "verify": Entry("compsearch.indexer.commands.verify:verify_command",
                    "Check every file of an index against its checksums."),
    "search": Entry("compsearch.search.commands.search:search_command",
                    "Search an index by text or image, one property at a time."),
    "serve": Entry("compsearch.search.commands.serve:serve_command", "Serve an index: HTTP API and web page."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[name].target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        command.short_help = command.short_help or COMMANDS[name].summary
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the registry alone: no command module is imported."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, entry.summary) for name, entry in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compsearch")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Property-specific image search on the components of Vision Transformers.

    Decompose a ViT's image representation into attention heads and MLPs, align them
    to CLIP space, rank them per property (colour, texture, shape, …), and search an
    image collection by one property at a time.

    The commands are listed in the order they are used: `demo` runs the whole product
    offline on a synthetic world; `sample` shows one decomposition without any data;
    offline, `world fixture-clip` prints a small CLIP to align to
    (--clip local-dir:<folder>); `decompose` looks at a model's components on your
    images; `align` maps each component into the CLIP's space (writes an aligner),
    `rank` picks the components of each property (writes ranking.json), `describe`,
    `explain` and `debias` look into components; `index` builds an index directory from a
    collection and a ranking (keeping a component store), `add-property` and `reindex` change its
    properties from that store without the images, `info` describes it, `verify` checks it, `search` and `serve` query it. Each
    command explains itself: compsearch COMMAND --help.
    """
    ctx.with_resource(_one_line_warnings())


class _WarningLines(logging.Handler):
    """compsearch's warnings (:func:`mapping.errors.warn`) as one ``warning: …`` line each on
    stderr, the stream looked up per line (click's test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"warning: {record.getMessage()}", err=True)


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """While a command runs, every compsearch warning prints as one ``warning:`` line."""
    handler = _WarningLines(logging.WARNING)
    warnings_logger().addHandler(handler)
    try:
        yield
    finally:
        warnings_logger().removeHandler(handler)


def main() -> None:
    """Runs the group (:mod:`.launch` calls it and reports a CompsearchError): a usage error
    becomes one line on stderr and exit code 2."""
    try:
        cli.main(standalone_mode=False)
    except click.UsageError as error:
        where = f" — see `{error.ctx.command_path} --help`" if error.ctx else ""
        click.echo(f"error: {error.format_message()}{where}", err=True)
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
