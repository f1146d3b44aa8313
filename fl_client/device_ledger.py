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

What one release is. The DP-SGD noise of a round is seeded from the digest of the round's
inputs (global arrays and instructions, `fl_client.training_seed`), so the same inputs
reproduce the same noised update and different inputs get independent noise. The ledger
therefore keys a training release by (run, round, kind, inputs digest): a server that
re-sends a round with any change of inputs (one weight nudged) gets a second release and
the device is charged for it, as it must be; a server that redoes a round after a crash
sends the same inputs and gets the same release, free. Charging rather than refusing keeps
a device useful to an honest server that re-plans, and its cap still bounds the total.
A release recorded at check-in (central DP: the device joins the round's Poisson
population before it sees any inputs) has no digest; the round's first training binds it.

File versions: version 2 stores the digest with each release. A version 1 file still
opens: its releases get the digest ``unknown-v1``, which matches no real digest, so a round
recorded by an older fedmsr and trained again is charged again (an over-count, never an
under-count). The file is rewritten as version 2 at its next write.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
VERSION = 2
#: Versions this fedmsr reads (older ones are upgraded on the next write).
READABLE_VERSIONS = (1, 2)
#: The inputs digest given to releases of a version 1 file (they did not record one).
UNKNOWN_INPUTS = "unknown-v1"


class DeviceLedgerError(Exception):
    """The device's ledger cannot be used (missing, corrupt) or says no; never train then."""


class DeviceBudgetExceeded(DeviceLedgerError):
    """The planned release would take the device past its own cap."""


@dataclass(frozen=True)
class DeviceRelease:
    """One release the device made (or is about to make) in a run's round.

    ``inputs`` is the hex SHA-256 of what the training started from (global arrays and
    instructions); None for a release recorded at check-in that no training has bound yet.
    """

    run_id: str
    round_number: int
    event: DpEvent
    inputs: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run_id, "round": self.round_number, "inputs": self.inputs,
                **self.event.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], version: int = VERSION) -> DeviceRelease:
        fields = dict(data)
        run_id, round_number = fields.pop("run"), fields.pop("round")
        _check_run(run_id, round_number)
        inputs = fields.pop("inputs") if version >= 2 else UNKNOWN_INPUTS
        if inputs is not None and (not isinstance(inputs, str) or not inputs):
            raise ValueError(f"inputs must be a digest string or null, got {inputs!r}")
        return cls(run_id, int(round_number), DpEvent.from_dict(fields), inputs)


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


def verified(raw: bytes, file_format: str, version: int | tuple[int, ...]) -> dict[str, Any]:
    """The content of a file written by :func:`sealed`; ValueError (naming what is wrong)
    when it is not JSON, not that format or (one of the) version(s), or does not match its
    checksum."""
    versions = (version,) if isinstance(version, int) else version
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict) or data.get("format") != file_format:
        raise ValueError(f"not a {file_format} file")
    if data.get("version") not in versions or isinstance(data.get("version"), bool):
        raise ValueError(f"version {data.get('version')!r}, this fedmsr reads "
                         f"{' or '.join(str(v) for v in versions)} (a newer fedmsr wrote it?)")
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
            data = verified(raw, FORMAT, READABLE_VERSIONS)
            releases = tuple(DeviceRelease.from_dict(r, data["version"])
                             for r in data["releases"])
            return cls(path, _check_cap(data["cap_epsilon"]), check_delta(data["delta"]),
                       releases)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
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

    def _cap(self, registry_cap: float | None) -> tuple[float | None, str]:
        """The cap a decision uses: the smaller of the device's own and `registry_cap`."""
        caps = [(c, who) for c, who in ((self.cap_epsilon, "its own"),
                                       (_check_cap(registry_cap), "the registry's"))
                if c is not None]
        return min(caps) if caps else (None, "")

    def would_exceed(self, planned: Iterable[DpEvent], registry_cap: float | None = None
                     ) -> bool:
        planned = tuple(planned)
        cap, _ = self._cap(registry_cap)
        if cap is None or not planned:
            return False
        return would_exceed(self.history, planned, cap, self.delta)

    def check(self, planned: Iterable[DpEvent], registry_cap: float | None = None,
              action: str = "train") -> None:
        """Raise DeviceBudgetExceeded when `planned` would take the device past its cap
        (the smaller of its own and `registry_cap`, when the server sends one)."""
        planned = tuple(planned)
        if self.would_exceed(planned, registry_cap):
            cap, who = self._cap(registry_cap)
            raise DeviceBudgetExceeded(
                f"device ledger {self.path}: this release would take the device past "
                f"{who} cap epsilon={cap:g} at delta={self.delta:g} (spent "
                f"{self.epsilon():.4g} over {len(self.releases)} releases): refusing to "
                f"{action}")

    def unrecorded(self, run_id: str, round_number: int, events: Iterable[DpEvent],
                   inputs: bytes | None = None) -> tuple[DpEvent, ...]:
        """The events of (run, round) on `inputs` this ledger does not hold yet: what the
        round would still cost. Without `inputs` (check-in, before the device has seen the
        round's arrays) a round already recorded costs nothing new here; the training
        decides, on its digest (see the module docstring)."""
        _check_run(run_id, round_number)
        return tuple(r.event for r in self._apply(run_id, round_number, tuple(events),
                                                   _hex(inputs))[1])

    def report(self) -> LedgerReport:
        return LedgerReport(epsilon=self.epsilon(), delta=self.delta, events=len(self.releases))

    # -- recording -----------------------------------------------------------------------

    def reserve(self, run_id: str, round_number: int, events: Iterable[DpEvent],
                inputs: bytes | None = None, registry_cap: float | None = None,
                action: str = "train") -> None:
        """Check and record the round's releases BEFORE training, under the file lock.

        Re-reads the file first (another process of the device may have written). With
        `inputs` (the training's inputs digest): a release of (run, round, kind) on the
        same digest is not recorded twice (a crash redo is free), one reserved at check-in
        without a digest is bound to it (free), and any other digest is a new release,
        charged. Without `inputs` (check-in): a round already recorded adds nothing. The
        same release key with other parameters is an error (a round is not re-planned).
        `registry_cap` (the server's cap for the device) is checked besides the device's own.
        """
        _check_run(run_id, round_number)
        events = tuple(events)
        with locked(self.path):
            current = self._read(self.path)
            releases, new = current._apply(run_id, round_number, events, _hex(inputs))
            current.check((r.event for r in new), registry_cap, action)
            if releases != current.releases:
                current.releases = releases
                current._write()
        self.cap_epsilon, self.delta, self.releases = (current.cap_epsilon, current.delta,
                                                       current.releases)

    def _apply(self, run_id: str, round_number: int, events: tuple[DpEvent, ...],
               inputs: str | None) -> tuple[tuple[DeviceRelease, ...], tuple[DeviceRelease, ...]]:
        """(every release after recording `events` on `inputs`, the ones that are charged)."""
        releases = list(self.releases)
        new: list[DeviceRelease] = []
        for event in events:
            if not isinstance(event, DpEvent):
                raise ValueError(f"events must be DpEvents, got {type(event).__name__}")  # noqa: TRY004
            kind = EventKind(event.kind)
            same = [i for i, r in enumerate(releases)
                    if (r.run_id, r.round_number, EventKind(r.event.kind)) == (run_id,
                                                                                round_number, kind)]
            if inputs is None:
                if same and all(releases[i].event != event for i in same):
                    raise self._replanned(event, run_id, round_number)
                if not same:
                    new.append(DeviceRelease(run_id, round_number, event, None))
                    releases.append(new[-1])
                continue
            on_inputs = [i for i in same if releases[i].inputs == inputs]
            unbound = [i for i in same if releases[i].inputs is None
                       and releases[i].event == event]
            if on_inputs:
                if releases[on_inputs[0]].event != event:
                    raise self._replanned(event, run_id, round_number)
            elif unbound:  # reserved at check-in: this training is the release it stood for
                releases[unbound[0]] = dataclasses.replace(releases[unbound[0]], inputs=inputs)
            else:  # a first training, or the same round again on other inputs: charged
                new.append(DeviceRelease(run_id, round_number, event, inputs))
                releases.append(new[-1])
        return tuple(releases), tuple(new)

    def _replanned(self, event: DpEvent, run_id: str, round_number: int) -> DeviceLedgerError:
        return DeviceLedgerError(
            f"device ledger {self.path} already has a {event.kind.value} release for run "
            f"{run_id} round {round_number} with other parameters; a round's release is not "
            "re-planned")


def _hex(inputs: bytes | None) -> str | None:
    if inputs is None:
        return None
    if not isinstance(inputs, bytes) or len(inputs) != 32:
        raise ValueError("inputs must be a 32-byte SHA-256 digest (fl_client.training_seed."
                         "inputs_digest)")
    return inputs.hex()


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
