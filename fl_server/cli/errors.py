"""The one way a `fedmsr` command refuses bad input: one line on stderr,
`error: <option>: <what is wrong>`, exit 2, before anything is started or written."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

EXIT_BAD_INPUT = 2


def fail(option: str, problem: str) -> NoReturn:
    """Refuse the value given for `option` (``--devices``; ``NAME`` for an argument)."""
    print(f"error: {option}: {problem}", file=sys.stderr)
    raise typer.Exit(EXIT_BAD_INPUT)
