"""Model arrays on the wire: name -> NumPy array, as Flower's `ArrayRecord`."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


def arrays_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The arrays of a record, by name."""
    return {name: array.numpy() for name, array in record.items()}


def record_of(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """A record of `arrays` (C-contiguous copies where needed; names kept)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def record_bytes(record: ArrayRecord) -> int:
    """Serialized size of a record's arrays (the bulk of every model message)."""
    return sum(len(array.data) for array in record.values())
