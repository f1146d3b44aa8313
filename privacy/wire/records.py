"""Typed reads of the records in a message: one value, of the type the wire contract says.

Flower types a `ConfigRecord` value as any of `int | float | str | bytes | bool` or a list
of them, and a `RecordDict` entry as any of the three record kinds: what a key holds is
known only from the contract, and a peer (or a bug) may send something else. Each reader
here checks the type it expects and raises ValueError naming the key, so a wrong type is
reported as a malformed message instead of surfacing later as an odd TypeError (or, for
`int("7")`, not at all). A missing key still raises KeyError, as a plain lookup does, so
callers keep one handler for "missing" with their own message. ValueError rather than
TypeError: to the receiver a wrong type is one more way a message is malformed, and
callers already turn ValueError into their "malformed" answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from privacy.checks import is_int, is_number

_T = TypeVar("_T")


def config_int(record: ConfigRecord, key: str) -> int:
    """`record[key]`, an int (not a bool)."""
    value = record[key]
    if not is_int(value):
        raise ValueError(_wrong(key, "an int", value))
    return int(value)


def config_float(record: ConfigRecord, key: str) -> float:
    """`record[key]`, a real number (int or float, not a bool), as a float."""
    return _number(record, key)


def config_str(record: ConfigRecord, key: str) -> str:
    """`record[key]`, a str."""
    return _of_type(record, key, str, "a str")


def config_bytes(record: ConfigRecord, key: str) -> bytes:
    """`record[key]`, bytes."""
    return _of_type(record, key, bytes, "bytes")


def metric_float(record: MetricRecord, key: str) -> float:
    """`record[key]`, a number (not a list), as a float."""
    return _number(record, key)


def array_record(content: RecordDict, key: str) -> ArrayRecord:
    """`content[key]`, an ArrayRecord."""
    return _of_type(content, key, ArrayRecord, "an ArrayRecord")


def config_record(content: RecordDict, key: str) -> ConfigRecord:
    """`content[key]`, a ConfigRecord."""
    return _of_type(content, key, ConfigRecord, "a ConfigRecord")


def metric_record(content: RecordDict, key: str) -> MetricRecord:
    """`content[key]`, a MetricRecord."""
    return _of_type(content, key, MetricRecord, "a MetricRecord")


def _of_type(mapping: Mapping[str, object], key: str, kind: type[_T], expected: str) -> _T:
    value = mapping[key]
    if not isinstance(value, kind):
        raise ValueError(_wrong(key, expected, value))  # noqa: TRY004
    return value


def _number(record: Mapping[str, object], key: str) -> float:
    value = record[key]
    if not is_number(value):
        raise ValueError(_wrong(key, "a number", value))
    return float(value)


def _wrong(key: str, expected: str, value: object) -> str:
    return f"{key} must be {expected}, got {type(value).__name__}"
