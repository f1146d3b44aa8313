"""Whether output may carry colour or redraw itself: only on a terminal.

Output into a pipe or a file (CI logs, `2> run.log`, `| tee`) gets plain lines: no ANSI
colour codes, no progress bars redrawn in place. `NO_COLOR` (https://no-color.org), set to
anything but the empty string, turns colour off on a terminal too; rich's own consoles
follow the same two rules, this is for the output rich does not make (Flower's log, Ray's
worker prefixes) and for deciding whether to show progress at all.
"""

from __future__ import annotations

import os
from typing import TextIO


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real stream
        return False


def colour_allowed(stream: TextIO) -> bool:
    """A terminal, and the user did not ask for no colour."""
    return is_terminal(stream) and os.environ.get("NO_COLOR", "") == ""
