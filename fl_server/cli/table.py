"""One table, two renderings: rich's box table on a terminal, plain aligned columns
otherwise (a pipe, a file, a CI log), so `grep`/`awk` see one row per line and no box
characters."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]], title: str = "",
                right: Sequence[str] = ()) -> None:
    """Print `rows` under `columns`; the columns named in `right` are right-aligned."""
    if sys.stdout.isatty():
        table = Table(title=title or None)
        for column in columns:
            table.add_column(column, justify="right" if column in right else "left")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(w) if col in right else cell.ljust(w)
                         for cell, w, col in zip(cells, widths, columns, strict=True)).rstrip()

    if title:
        print(title)
    print(line(columns))
    for row in rows:
        print(line(row))
