"""Independent reference figures, computed once.

The tests hold the project's privacy figures against dp-accounting's own accountants,
called directly (`independent_epsilon` and its kin in the test modules). Those references
are pure functions of their arguments, of the test module that defines them and of
dp-accounting; they never call the code under test. They are also the costliest part of the
ledger and accounting tests (about two thirds of `tests/test_privacy_ledger*.py` and
`tests/test_ledger_adversary.py`), so `@reference` computes each one once:

* within a process, always: a test run shares them across tests;
* across processes, only where `FEDMSR_REFERENCE_CACHE` names a directory: mutation testing
  (`scripts/mutation.sh`) runs every mutant's tests in a new process, and a mutant cannot
  change a reference, so the figure a clean run computed is the figure every mutant's run
  would compute. The key hashes the defining module's whole source (a constant it reads
  counts too), the arguments and the versions of dp-accounting, NumPy and SciPy; a file is
  written whole, then renamed into place (`privacy.atomic_write`), so parallel mutants
  never read half of one.

Arguments must have a faithful `repr` (numbers, strings, tuples, lists, frozen dataclasses);
an iterator argument is read into a tuple first, since it can only be consumed once.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec

from privacy.atomic_write import write_text_atomic

P = ParamSpec("P")
ENV_VAR = "FEDMSR_REFERENCE_CACHE"
_LIBRARIES = ("dp-accounting", "numpy", "scipy")


def reference(fn: Callable[P, float]) -> Callable[P, float]:
    """Memoize an independent reference figure (module docstring): same value, computed once."""
    source = Path(inspect.getfile(fn)).read_bytes()
    versions = tuple(importlib.metadata.version(name) for name in _LIBRARIES)
    stem = repr((fn.__module__, fn.__qualname__, hashlib.sha256(source).hexdigest(), versions,
                 sys.version_info[:2]))
    seen: dict[str, float] = {}

    @functools.wraps(fn)
    def memoized(*args: P.args, **kwargs: P.kwargs) -> float:
        fixed = tuple(tuple(a) if isinstance(a, Iterator) else a for a in args)
        key = hashlib.sha256(repr((stem, fixed, sorted(kwargs.items()))).encode()).hexdigest()
        if key not in seen:
            seen[key] = _on_disk(key, lambda: float(fn(*fixed, **kwargs)))  # type: ignore[arg-type]
        return seen[key]

    return memoized


def _on_disk(key: str, compute: Callable[[], float]) -> float:
    root = os.environ.get(ENV_VAR)
    if not root:
        return compute()
    path = Path(root) / f"{key}.hex"
    try:
        return float.fromhex(path.read_text())
    except (FileNotFoundError, ValueError):  # not there yet (or not ours): compute it
        pass
    value = compute()
    write_text_atomic(path, value.hex())  # parallel mutants never read half a file
    return value
