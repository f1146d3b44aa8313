"""Errors of the secure-aggregation protocol.

Separate classes because callers react differently: a `ProtocolAbort` ends the round
with no sum released (the next round proceeds), a `GuardViolation` is a device refusing
a request that could unmask one update, an `EncodingError` is a configuration that could
overflow and is refused before anything is sent.
"""

from __future__ import annotations


class SecAggError(Exception):
    """Base class of every secure-aggregation error."""


class ProtocolAbort(SecAggError):
    """The round cannot finish without weakening the guarantee; nothing is released."""


class GuardViolation(SecAggError):
    """A device refused a request (e.g. both shares of one peer)."""


class StageError(SecAggError):
    """A stage was called out of order or twice."""


class EncodingError(SecAggError, ValueError):
    """The encoding parameters admit overflow or the input is out of spec."""


class ShamirError(SecAggError, ValueError):
    """Not enough, duplicate or inconsistent shares."""
