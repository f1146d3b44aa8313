"""The device's own privacy ledger: what IT has released, checked before every training.

Why a device keeps one although the server has a ledger (issue 4): the device is the party
whose privacy is spent, so it must not have to trust the server's bookkeeping. Before each
training it asks its own ledger whether the planned release keeps it within its own cap and
refuses otherwise; at check-in it reports its total, and the server records any
disagreement (``fl_server.privacy_ledger.audit_device_report``).

The file (``<state dir>/privacy_ledger.json``) is append-only in meaning:

* every write is atomic (temporary file, fsync, rename, fsync of the directory), under an
  exclusive lock, so a crash leaves the old ledger or the new one;
* the content carries a SHA-256 of itself; a file that does not parse or does not match is
  *corrupt*, and the device refuses to train with an error naming the file. It is never
  reset to zero: an empty ledger would let the device spend its whole budget again;
* a missing file is refused the same way by :meth:`DeviceLedger.open`; only provisioning
  creates one (:meth:`DeviceLedger.create`), once.

A release is recorded *before* training (:meth:`DeviceLedger.reserve`): if training then
fails the device has over-counted, never under-counted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privacy.accounting import DpEvent, EventKind, pld_epsilon, would_exceed
from privacy.accounting.events import check_delta
from privacy.atomic_write import write_bytes_atomic as _write_atomic
from privacy.checks import is_finite, is_int
from privacy.wire.budget import LedgerReport

FILE_NAME = "privacy_ledger.json"
FORMAT = "fedmsr-device-ledger"
VERSION = 1


class DeviceLedgerError(Exception):
    """The device's ledger cannot be used (missing, corrupt) or says no; never train then."""


class DeviceBudgetExceeded(DeviceLedgerError):
    """The planned release would take the device past its own cap."""


@dataclass(frozen=True)
class DeviceRelease:
    """One release the device made (or is about to make) in a run's round."""

    run_id: str
    round_number: int
    event: DpEvent

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run_id, "round": self.round_number, **self.event.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceRelease:
        fields = dict(data)
        run_id, round_number = fields.pop("run"), fields.pop("round")
        _check_run(run_id, round_number)
        return cls(run_id, int(round_number), DpEvent.from_dict(fields))


def _check_run(run_id: object, round_number: object) -> None:
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"run id must be a non-empty string, got {run_id!r}")
    if not is_int(round_number) or round_number < 1:
        raise ValueError(f"round must be an int >= 1, got {round_number!r}")


def _digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def sealed(body: Mapping[str, Any]) -> bytes:
    """A state file's bytes: `body` plus the SHA-256 of its canonical JSON."""
    return json.dumps({**body, "sha256": _digest(body)}, indent=1, sort_keys=True).encode()


def verified(raw: bytes, file_format: str, version: int) -> dict[str, Any]:
    """The content of a file written by :func:`sealed`; ValueError (naming what is wrong)
    when it is not JSON, not that format or version, or does not match its checksum."""
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict) or data.get("format") != file_format:
        raise ValueError(f"not a {file_format} file")
    if data.get("version") != version:
        raise ValueError(f"version {data.get('version')!r}, this fedmsr reads {version}")
    body = {k: v for k, v in data.items() if k != "sha256"}
    if data.get("sha256") != _digest(body):
        raise ValueError("checksum mismatch")
    return body


def _check_cap(cap: float | None) -> float | None:
    if cap is None:
        return None
    if not is_finite(cap) or cap <= 0:
        raise ValueError(f"cap_epsilon must be a finite number > 0 or None, got {cap!r}")
    return float(cap)


class DeviceLedger:
    """A device's releases, its own (epsilon cap, delta), and the decisions they imply."""

    def __init__(self, path: Path, cap_epsilon: float | None, delta: float,
                 releases: tuple[DeviceRelease, ...]) -> None:
        self.path = path
        self.cap_epsilon = cap_epsilon
        self.delta = delta
        self.releases = releases

    # -- creating and opening ------------------------------------------------------------

    @classmethod
    def create(cls, state_dir: Path, cap_epsilon: float | None, delta: float) -> DeviceLedger:
        """Provisioning only: a new, empty ledger. Refuses to replace an existing one."""
        path = Path(state_dir) / FILE_NAME
        ledger = cls(path, _check_cap(cap_epsilon), check_delta(delta), ())
        with locked(path):
            if path.exists():
                raise DeviceLedgerError(f"device ledger {path} already exists; a ledger is "
                                        "never re-created (that would reset its spend)")
            ledger._write()
        return ledger

    @classmethod
    def open(cls, state_dir: Path) -> DeviceLedger:
        """The device's ledger; missing or corrupt -> DeviceLedgerError (never a reset)."""
        path = Path(state_dir) / FILE_NAME
        with locked(path):
            return cls._read(path)

    @classmethod
    def _read(cls, path: Path) -> DeviceLedger:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise DeviceLedgerError(
                f"device ledger {path} is missing: refusing to train (a device without its "
                "ledger cannot know its spend; restore the file, or provision the device "
                "again with a new identity)") from None
        except OSError as exc:
            raise DeviceLedgerError(f"device ledger {path} cannot be read ({exc.strerror}): "
                                    "refusing to train") from None
        try:
            data = verified(raw, FORMAT, VERSION)
            releases = tuple(DeviceRelease.from_dict(r) for r in data["releases"])
            return cls(path, _check_cap(data["cap_epsilon"]), check_delta(data["delta"]),
                       releases)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DeviceLedgerError(
                f"device ledger {path} is corrupt ({exc}): refusing to train; it is never "
                "reset to zero, restore it from a backup") from None

    def _write(self) -> None:
        body = {"format": FORMAT, "version": VERSION, "cap_epsilon": self.cap_epsilon,
                "delta": self.delta, "releases": [r.to_dict() for r in self.releases],
                "written_at": dt.datetime.now(dt.UTC).isoformat()}
        _write_atomic(self.path, sealed(body))

    # -- decisions -----------------------------------------------------------------------

    @property
    def history(self) -> tuple[DpEvent, ...]:
        return tuple(r.event for r in self.releases)

    def epsilon(self) -> float:
        """The device's reported epsilon (PLD, never below the exact value) at its delta."""
        return pld_epsilon(self.history, self.delta) if self.releases else 0.0

    def would_exceed(self, planned: Iterable[DpEvent]) -> bool:
        planned = tuple(planned)
        if self.cap_epsilon is None or not planned:
            return False
        return would_exceed(self.history, planned, self.cap_epsilon, self.delta)

    def check(self, planned: Iterable[DpEvent]) -> None:
        """Raise DeviceBudgetExceeded when `planned` would take the device past its cap."""
        planned = tuple(planned)
        if self.would_exceed(planned):
            raise DeviceBudgetExceeded(
                f"device ledger {self.path}: this release would take the device past its own "
                f"cap epsilon={self.cap_epsilon:g} at delta={self.delta:g} (spent "
                f"{self.epsilon():.4g} over {len(self.releases)} releases): refusing to train")

    def unrecorded(self, run_id: str, round_number: int,
                   events: Iterable[DpEvent]) -> tuple[DpEvent, ...]:
        """The events of (run, round) this ledger does not hold yet: what the round would
        still cost. A round redone after a server crash was recorded the first time and
        costs nothing new; the same key with other parameters raises (not re-planned)."""
        _check_run(run_id, round_number)
        return tuple(r.event for r in self._new(run_id, round_number, tuple(events)))

    def report(self) -> LedgerReport:
        return LedgerReport(epsilon=self.epsilon(), delta=self.delta, events=len(self.releases))

    # -- recording -----------------------------------------------------------------------

    def reserve(self, run_id: str, round_number: int, events: Iterable[DpEvent]) -> None:
        """Check and record the round's releases BEFORE training, under the file lock.

        Re-reads the file first (another process of the device may have written); a
        release already recorded for (run, round, kind) is not recorded twice; the same
        key with other parameters is an error (a round is not re-planned).
        """
        _check_run(run_id, round_number)
        events = tuple(events)
        with locked(self.path):
            current = self._read(self.path)
            new = current._new(run_id, round_number, events)
            current.check(r.event for r in new)
            if new:
                current.releases = current.releases + new
                current._write()
        self.cap_epsilon, self.delta, self.releases = (current.cap_epsilon, current.delta,
                                                       current.releases)

    def _new(self, run_id: str, round_number: int,
             events: tuple[DpEvent, ...]) -> tuple[DeviceRelease, ...]:
        known = {(r.run_id, r.round_number, r.event.kind): r.event for r in self.releases}
        new: list[DeviceRelease] = []
        for event in events:
            if not isinstance(event, DpEvent):
                raise ValueError(f"events must be DpEvents, got {type(event).__name__}")  # noqa: TRY004
            key = (run_id, round_number, EventKind(event.kind))
            if key in known and known[key] != event:
                raise DeviceLedgerError(
                    f"device ledger {self.path} already has a {event.kind.value} release for "
                    f"run {run_id} round {round_number} with other parameters; a round's "
                    "release is not re-planned")
            if key not in known:
                known[key] = event
                new.append(DeviceRelease(run_id, round_number, event))
        return tuple(new)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive lock on `<ledger>.lock`: one read-modify-write at a time per device."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
