"""The machine's processes as /proc shows them: no signal is sent, nothing is imported.

The launcher and the Ray start both need to find processes they started (a process group,
a process's descendants) and tell a live process from a zombie or a reused pid; each
reads the same four fields of /proc/<pid>/stat, parsed here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessStat:
    """Fields of /proc/<pid>/stat: state (3), parent (4), group (5), start time (22)."""

    pid: int
    state: str
    ppid: int
    pgid: int
    start_ticks: int

    @property
    def alive(self) -> bool:
        """Running or sleeping: not a zombie (exited, not yet reaped) and not dead."""
        return self.state not in ("Z", "X")


def read_stat(pid: int) -> ProcessStat | None:
    """Process `pid`'s stat, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")": split at
    # the last ")".
    fields = text.rsplit(")", 1)[-1].split()
    try:
        return ProcessStat(pid, fields[0], int(fields[1]), int(fields[2]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def live_processes() -> list[ProcessStat]:
    """Every process on the machine that is not a zombie."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None and stat.alive:
                found.append(stat)
    return found


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`: its children, their children, and so on."""
    children: dict[int, list[int]] = {}
    for stat in live_processes():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
