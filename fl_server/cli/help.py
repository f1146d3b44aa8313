"""How `fedmsr`'s help screens look: plain text, options in named panels.

The command line keeps Typer's plain (click) help, `rich_markup_mode=None`: it is read in
pipes and pasted into tickets, and it carries no colour codes. Two things Typer 0.20 does
not get right in that mode are fixed here:

* it escapes the ``[default: 8]`` suffix for rich markup even when no markup is rendered,
  so every screen showed ``\\[default: 8]``: :class:`PlainHelpFormatter` undoes that
  escape, and :func:`use_plain_help` puts it on every command of the tree (present and
  future ones: the walk happens when the `fedmsr` command is built);
* it ignores an option's ``rich_help_panel`` without rich markup: :class:`PanelledCommand`
  prints each panel as its own section (`fedmsr run`'s ~40 options), in the order of
  ``panel_order``; options without a panel come last, under "Options".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import click
from typer.core import TyperCommand

#: The escape Typer puts before ``[`` (rich markup) in an option's help suffix.
_MARKUP_ESCAPE = "\\["


class PlainHelpFormatter(click.HelpFormatter):
    """click's formatter, minus Typer's rich-markup escape of the ``[default: …]`` suffix."""

    def write_dl(self, rows: Iterable[tuple[str, str]], col_max: int = 30,
                 col_spacing: int = 2) -> None:
        super().write_dl([(term, text.replace(_MARKUP_ESCAPE, "[")) for term, text in rows],
                         col_max, col_spacing)


class PlainHelpContext(click.Context):
    formatter_class = PlainHelpFormatter


def use_plain_help(command: click.Command) -> click.Command:
    """Give `command` and every command under it the plain formatter; returns `command`."""
    command.context_class = PlainHelpContext
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            use_plain_help(sub)
    return command


class PanelledCommand(TyperCommand):
    """A command whose options are listed panel by panel (``rich_help_panel``)."""

    #: Panels in the order they are printed; a panel not named here follows them.
    panel_order: Sequence[str] = ()

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        panels: dict[str | None, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                panels.setdefault(getattr(param, "rich_help_panel", None), []).append(record)
        named = [p for p in panels if p is not None]
        order = [p for p in self.panel_order if p in panels]
        order += [p for p in named if p not in order]
        for panel in order:
            with formatter.section(panel):
                formatter.write_dl(panels[panel])
        if None in panels:  # -h/--help and anything given no panel
            with formatter.section("Options"):
                formatter.write_dl(panels[None])
