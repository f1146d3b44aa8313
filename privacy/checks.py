"""Type checks for values that cross a trust boundary (configs, messages, files, APIs).

Python's ``bool`` is an ``int`` (``True + True == 2``), so ``isinstance(x, int)`` lets
``True`` through as a round count, a port or a noise multiplier; and a NaN or an infinity
passes every ``<`` and ``>`` comparison that is meant to bound a number. These predicates
say what is meant. They accept NumPy scalars too (``np.int64`` is a ``numbers.Integral``),
since values read back from arrays are NumPy's. Each caller raises its own error with its
own message: what is wrong depends on where the value came from.
"""

from __future__ import annotations

import math
import numbers
from typing import TypeGuard


def is_int(value: object) -> TypeGuard[int]:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[float]:
    """A real number (int, float or NumPy scalar), not a bool; may be NaN or infinite."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite(value: object) -> TypeGuard[float]:
    """A real number, not a bool, neither NaN nor infinite."""
    return is_number(value) and math.isfinite(value)
