"""The server's privacy ledger: every DP release charged to every device, for ever.

Why it looks like this (issue 4):

* A release is **reserved before the train message is sent**, in the same transaction that
  checks the device's cap. A reserved release counts as spent for ever: the device may have
  trained and sent even if the server crashed before aggregating. `commit` only marks that
  the round finished (reserved -> committed); nothing ever lowers a device's spend. The
  database enforces that too (triggers of revision 0002_privacy_ledger).
* One row per (device, run, round, kind): re-reserving a round on resume finds the row and
  charges nothing twice.
* Two server processes may reserve for the same device at once. Each reservation locks the
  devices' rows first (PostgreSQL: ``SELECT ... FOR NO KEY UPDATE``, in id order so two
  transactions never deadlock; SQLite: ``BEGIN IMMEDIATE``, one writer at a time) and only
  then reads the spend it decides on, so the second waits and sees the first's charge.
* Enforcement is two-stage (``privacy.accounting.budget.would_exceed``): the cached RDP
  vector (``device_budgets``, a multiply-add per release) answers "fits" for nearly every
  device; only a device RDP calls over its cap has its event history read and checked
  against the reported (PLD) epsilon, so a device is refused exactly when its *reported*
  epsilon would pass the cap.
* The cached vector is only a cache. Whoever can write to the database could overwrite it
  (revision 0004's triggers refuse a vector change without new event rows, but an owner
  can drop triggers), so `reserve` recomputes each device's vector from its event rows
  before charging it and decides on those rows. A cache *below* the rows (zeroed, stale)
  is audited (``budget.ledger-mismatch``) and repaired by the charge; rows *below* the
  cache (a row deleted, a noise multiplier raised) mean the rows themselves were rewritten:
  the device is refused and audited, never charged on the lowered figure.
* A cap is an (epsilon, delta) pair: a device's own ``delta_cap`` is used when set, else the
  run's delta. No cap at all (device and run) means the release always fits.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from fl_server.registry import audit
from fl_server.registry.db import (
    RegistryError,
    get_engine,
    in_chunks,
    require_schema,
    session_scope,
    unreachable,
)
from fl_server.registry.models import (
    AuditEntry,
    Device,
    DeviceBudget,
    DeviceStatus,
    PrivacyEvent,
    as_utc,
    utcnow,
)
from privacy.accounting import (
    ORDERS,
    DpEvent,
    EventKind,
    epsilon_from_rdp,
    pld_epsilon,
    rdp_vector,
    would_exceed,
)
from privacy.accounting.events import Composition, check_delta, composition
from privacy.accounting.fleet import FleetBudgets, summarise
from privacy.checks import is_finite, is_int
from privacy.wire.budget import LedgerReport

#: Names the order grid a stored vector was computed on; a vector on another grid is refused.
ORDERS_SHA256 = hashlib.sha256(np.ascontiguousarray(ORDERS, dtype="<f8").tobytes()).hexdigest()
#: Relative tolerance when comparing a device's own epsilon with the server's.
REPORT_RTOL = 1e-6


@dataclass(frozen=True)
class Release:
    """One planned release for one registry device."""

    device_id: int
    event: DpEvent


@dataclass(frozen=True)
class Refusal:
    """A device whose planned release would pass its cap (nothing was written for it)."""

    device_id: int
    name: str
    epsilon_spent: float  # reported (PLD) epsilon before this release
    epsilon_cap: float
    delta: float
    #: Empty for "would pass its cap"; else why the ledger itself could not be trusted.
    reason: str = ""


@dataclass(frozen=True)
class Reservation:
    reserved: tuple[int, ...]     # device ids whose release is now reserved (spent for ever)
    refused: tuple[Refusal, ...]  # would pass their cap: nothing written for them


@dataclass(frozen=True)
class LedgerEvent:
    """One ledger row, as plain data (what `fedmsr budget show --json` lists)."""

    id: int
    device_id: int
    run_id: str
    round_number: int
    kind: str
    sample_rate: float
    noise_multiplier: float
    steps: int
    status: str
    reserved_at: dt.datetime
    committed_at: dt.datetime | None

    @property
    def event(self) -> DpEvent:
        return DpEvent(self.sample_rate, self.noise_multiplier, self.steps,
                       EventKind(self.kind))

    def to_json_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "run": self.run_id, "round": self.round_number,
                "sample_rate": self.sample_rate, "noise_multiplier": self.noise_multiplier,
                "steps": self.steps, "status": self.status,
                "reserved_at": self.reserved_at.isoformat(),
                "committed_at": self.committed_at.isoformat() if self.committed_at else None}


@dataclass(frozen=True)
class BudgetState:
    """A device's spend: the reported epsilon over every reserved or committed release."""

    device_id: int
    name: str
    epsilon: float             # reported (PLD) epsilon at `delta`
    epsilon_rdp: float         # the RDP bound of the cached vector (what enforcement uses first)
    delta: float
    epsilon_cap: float | None  # the device's own cap (None: only a run's default applies)
    rounds: int                # distinct (run, round) pairs charged
    events: tuple[LedgerEvent, ...]

    @property
    def last_event(self) -> LedgerEvent | None:
        return self.events[-1] if self.events else None


@dataclass(frozen=True)
class Disagreement:
    """A device's own ledger and the server's differ (written to the audit log)."""

    device_id: int
    direction: str            # "server-under-counted" | "device-reported-less"
    device_epsilon: float
    device_events: int
    server_epsilon: float
    server_events: int
    delta: float


# -- validation -------------------------------------------------------------------------------

def _check_run(run_id: str, round_number: int) -> None:
    if not isinstance(run_id, str) or not 0 < len(run_id) <= 64:
        raise ValueError(f"run_id must be a non-empty string of at most 64 characters, "
                         f"got {run_id!r}")
    if not is_int(round_number) or round_number < 1:
        raise ValueError(f"round_number must be an int >= 1, got {round_number!r}")


def _check_cap(default_cap: float | None) -> float | None:
    if default_cap is None:
        return None
    if not is_finite(default_cap) or default_cap <= 0:
        raise ValueError(f"default_cap must be a finite number > 0 or None, got {default_cap!r}")
    return float(default_cap)


def _device_ids(device_ids: Iterable[int]) -> list[int]:
    ids = list(device_ids)
    for i in ids:
        if not is_int(i):
            raise ValueError(f"device ids must be ints (registry devices.id), got {i!r}")
    return [int(i) for i in ids]


def _planned(planned: DpEvent | Sequence[DpEvent]) -> tuple[DpEvent, ...]:
    events = (planned,) if isinstance(planned, DpEvent) else tuple(planned)
    if not events or not all(isinstance(e, DpEvent) for e in events):
        raise ValueError("planned must be a DpEvent or a non-empty sequence of DpEvents")
    return events


def _group_releases(releases: Sequence[Release]) -> dict[int, list[DpEvent]]:
    """Releases per device, in id order; one (device, kind) at most per reservation."""
    grouped: dict[int, list[DpEvent]] = defaultdict(list)
    for r in releases:
        if not isinstance(r, Release) or not isinstance(r.event, DpEvent):
            raise ValueError(f"releases must be Release(device_id, DpEvent), got {r!r}")  # noqa: TRY004
        (device_id,) = _device_ids([r.device_id])
        if any(e.kind == r.event.kind for e in grouped[device_id]):
            raise ValueError(f"device {device_id} has two {r.event.kind.value} releases in one "
                             "reservation; one per (device, round, kind)")
        grouped[device_id].append(r.event)
    return dict(sorted(grouped.items()))


# -- storage helpers --------------------------------------------------------------------------

def _decode(row: DeviceBudget) -> np.ndarray:
    if row.orders_sha256 != ORDERS_SHA256:
        raise RegistryError("device_budgets", f"device {row.device_id}'s RDP vector was "
                            "computed on another order grid than privacy.accounting.ORDERS")
    return np.frombuffer(row.rdp, dtype="<f8").astype(np.float64)


def _encode(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f8").tobytes()


def _lock_devices(session: Session, ids: Sequence[int]) -> dict[int, Device]:
    """Take the write lock the decision depends on, before reading any spend."""
    if session.get_bind().dialect.name == "sqlite":
        # One writer at a time for the whole transaction; reads below see the latest commit.
        session.connection().exec_driver_sql("BEGIN IMMEDIATE")
    devices: dict[int, Device] = {}
    for chunk in in_chunks(ids):
        stmt = select(Device).where(Device.id.in_(chunk)).order_by(Device.id)
        # NO KEY UPDATE: serialises reservations for a device without blocking the foreign
        # key checks of unrelated inserts (audit log, participation) that reference it.
        devices.update((d.id, d) for d in session.scalars(stmt.with_for_update(key_share=True)))
    missing = [i for i in ids if i not in devices]
    if missing:
        raise RegistryError("device", f"no registry device with id {missing[0]}"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return devices


def _vectors(session: Session, ids: Sequence[int]) -> dict[int, DeviceBudget]:
    rows: dict[int, DeviceBudget] = {}
    for chunk in in_chunks(ids):
        rows.update((b.device_id, b) for b in session.scalars(
            select(DeviceBudget).where(DeviceBudget.device_id.in_(chunk))))
    return rows


def _history(session: Session, device_id: int) -> list[LedgerEvent]:
    rows = session.scalars(select(PrivacyEvent).where(PrivacyEvent.device_id == device_id)
                           .order_by(PrivacyEvent.id))
    return [_as_event(r) for r in rows]


def _as_event(r: PrivacyEvent) -> LedgerEvent:
    return LedgerEvent(id=r.id, device_id=r.device_id, run_id=r.run_id,
                       round_number=r.round_number, kind=r.kind, sample_rate=r.sample_rate,
                       noise_multiplier=r.noise_multiplier, steps=r.steps, status=r.status,
                       reserved_at=as_utc(r.reserved_at),
                       committed_at=as_utc(r.committed_at) if r.committed_at else None)


def _spent(history: Sequence[LedgerEvent], delta: float) -> float:
    return _reported(composition([e.event for e in history]), delta)


@lru_cache(maxsize=8192)
def _reported(groups: Composition, delta: float) -> float:
    """The reported (PLD) epsilon of a composition, cached: a device over its RDP bound is
    asked again every round selection runs, with the same (append-only) history."""
    if not groups:
        return 0.0
    return pld_epsilon([DpEvent(q, sigma, steps) for (q, sigma), steps in groups], delta)


def _delta_for(device: Device, delta: float) -> float:
    return device.delta_cap if device.delta_cap is not None else delta


def _cap_for(device: Device, default_cap: float | None) -> float | None:
    return device.epsilon_cap if device.epsilon_cap is not None else default_cap


def _fits(session: Session, device: Device, vector: np.ndarray, planned: Sequence[DpEvent],
          cap: float | None, delta: float) -> Refusal | None:
    """None when `planned` keeps the device within its cap, else the refusal to report."""
    if cap is None:
        return None
    if not would_exceed(vector, planned, cap, delta):
        return None  # the RDP bound of the whole history plus the plan is within the cap
    return _refusal_by_history(session, device, planned, cap, delta)


def _refusal_by_history(session: Session, device: Device, planned: Sequence[DpEvent],
                        cap: float, delta: float) -> Refusal | None:
    """Stage 2, for a device whose RDP bound is over: the reported (PLD) figure decides."""
    history = _history(session, device.id)
    if _reported(composition([*(e.event for e in history), *planned]), delta) <= cap:
        return None  # RDP was loose; the reported (PLD) figure still fits
    return Refusal(device_id=device.id, name=device.name,
                   epsilon_spent=_spent(history, delta), epsilon_cap=cap, delta=delta)


# -- the contract API -------------------------------------------------------------------------

def reserve(url: str, run_id: str, round_number: int, releases: Sequence[Release],
            delta: float, default_cap: float | None) -> Reservation:
    """ONE transaction: lock each device's row, decide each device's releases against its
    cap, insert `reserved` rows and add their RDP to the device's cached vector.

    Idempotent per (device, run, round, kind): a row already there is not duplicated and
    counts as reserved (resume never double-charges). A device's new releases in one call
    are written all together or not at all.
    """
    _check_run(run_id, round_number)
    delta = check_delta(delta)
    default_cap = _check_cap(default_cap)
    grouped = _group_releases(releases)
    if not grouped:
        return Reservation((), ())
    reserved: list[int] = []
    refused: list[Refusal] = []
    with session_scope(url) as session:
        devices = _lock_devices(session, list(grouped))
        budgets = _vectors(session, list(grouped))
        existing = _existing(session, run_id, round_number, list(grouped))
        now = utcnow()
        for device_id, events in grouped.items():
            device = devices[device_id]
            new = _new_events(device_id, events, existing.get(device_id, {}))
            if not new:
                reserved.append(device_id)
                continue
            budget = budgets.get(device_id)
            history = _history(session, device_id)
            vector, tampered = _checked_vector(session, device, budget, history, run_id,
                                               _cap_for(device, default_cap),
                                               _delta_for(device, delta))
            if tampered is not None:
                refused.append(tampered)
                continue
            refusal = _fits(session, device, vector, new, _cap_for(device, default_cap),
                            _delta_for(device, delta))
            if refusal is not None:
                refused.append(refusal)
                continue
            _charge(session, device_id, budget, vector, len(history), new, run_id,
                    round_number, now)
            reserved.append(device_id)
    return Reservation(tuple(reserved), tuple(refused))


def _existing(session: Session, run_id: str, round_number: int,
              ids: Sequence[int]) -> dict[int, dict[str, PrivacyEvent]]:
    out: dict[int, dict[str, PrivacyEvent]] = defaultdict(dict)
    for chunk in in_chunks(ids):
        for row in session.scalars(select(PrivacyEvent).where(
                PrivacyEvent.run_id == run_id, PrivacyEvent.round_number == round_number,
                PrivacyEvent.device_id.in_(chunk))):
            out[row.device_id][row.kind] = row
    return out


def _new_events(device_id: int, events: Sequence[DpEvent],
                existing: dict[str, PrivacyEvent]) -> list[DpEvent]:
    """The events not yet in the ledger; an existing row must be the same release."""
    new = []
    for event in events:
        row = existing.get(event.kind.value)
        if row is None:
            new.append(event)
        elif (row.sample_rate, row.noise_multiplier, row.steps) != \
                (event.sample_rate, event.noise_multiplier, event.steps):
            raise RegistryError("privacy ledger", (
                f"device {device_id} already has a {event.kind.value} release for run "
                f"{row.run_id} round {row.round_number} with q={row.sample_rate}, "
                f"sigma={row.noise_multiplier}, steps={row.steps}; it cannot be re-planned "
                f"as q={event.sample_rate}, sigma={event.noise_multiplier}, "
                f"steps={event.steps} (resume with the run's original DP settings)"))
    return new


#: Relative tolerance between the cached vector and the one recomputed from the rows
#: (the cache is a running sum; the recomputation groups by (q, sigma) first).
VECTOR_RTOL = 1e-9


def _checked_vector(session: Session, device: Device, budget: DeviceBudget | None,
                    history: Sequence[LedgerEvent], run_id: str, cap: float | None,
                    delta: float) -> tuple[np.ndarray, Refusal | None]:
    """The device's RDP vector recomputed from its event rows (what `reserve` decides on),
    and a Refusal when the rows hold less than the cache: then the rows were rewritten or
    deleted and no figure from them can be trusted. Any mismatch is audited."""
    rows = rdp_vector([e.event for e in history]) if history else np.zeros_like(ORDERS)
    cached = _decode(budget) if budget is not None else np.zeros_like(ORDERS)
    counted = budget.events if budget is not None else 0
    tol = VECTOR_RTOL * np.maximum(1.0, np.abs(rows))
    with np.errstate(invalid="ignore"):  # inf - inf at the orders where RDP is infinite
        same = (rows == cached) | (np.abs(rows - cached) <= tol)
        lower = rows < cached - tol
    if counted == len(history) and bool(np.all(same)):
        return rows, None
    rows_lower = counted > len(history) or bool(np.any(lower))
    cached_eps = float(epsilon_from_rdp(cached, delta))
    rows_eps = float(epsilon_from_rdp(rows, delta))
    detail = {"cached_events": counted, "rows": len(history), "cached_epsilon": cached_eps,
              "rows_epsilon": rows_eps,
              "decision": "refused" if rows_lower else "charged from the rows"}
    audit.record(session, "budget.ledger-mismatch", detail, device_id=device.id, run_id=run_id)
    if not rows_lower:
        return rows, None  # the cache was lowered (or is stale): the rows are the truth
    return rows, Refusal(
        device_id=device.id, name=device.name, epsilon_spent=cached_eps,
        epsilon_cap=cap if cap is not None else float("inf"), delta=delta,
        reason=(f"its ledger rows ({len(history)}, epsilon {rows_eps:.4g}) hold less than its "
                f"cached RDP vector ({counted} events, epsilon {cached_eps:.4g}): rows were "
                "deleted or rewritten"))


def _charge(session: Session, device_id: int, budget: DeviceBudget | None, vector: np.ndarray,
            rows: int, new: Sequence[DpEvent], run_id: str, round_number: int,
            now: dt.datetime) -> None:
    """Insert the reserved rows and move the cached vector forward, in the caller's
    transaction (so the vector always equals the sum over the device's rows: `vector` and
    `rows` are recomputed from them, and revision 0004 checks the count)."""
    for event in new:
        session.add(PrivacyEvent(device_id=device_id, run_id=run_id, round_number=round_number,
                                 kind=event.kind.value, sample_rate=event.sample_rate,
                                 noise_multiplier=event.noise_multiplier, steps=event.steps,
                                 status="reserved", reserved_at=now))
    session.flush()  # the rows first: the database ties the vector's event count to them
    vector = vector + rdp_vector(new)
    if session.get_bind().dialect.name == "postgresql":
        # Through the one writer revision 0006 grants the runtime (it holds no INSERT or
        # UPDATE on device_budgets); the triggers still check the count and that no order
        # went down.
        session.execute(text("SELECT fedmsr_record_budget(:device, :rdp, :orders, :events, :at)"),
                        {"device": device_id, "rdp": _encode(vector), "orders": ORDERS_SHA256,
                         "events": rows + len(new), "at": now})
        if budget is not None:
            session.expire(budget)
    elif budget is None:
        session.add(DeviceBudget(device_id=device_id, rdp=_encode(vector),
                                 orders_sha256=ORDERS_SHA256, events=rows + len(new),
                                 updated_at=now))
    else:
        budget.rdp, budget.events, budget.updated_at = _encode(vector), rows + len(new), now


def commit(url: str, run_id: str, round_number: int, device_ids: Iterable[int]) -> None:
    """reserved -> committed (the only UPDATE the append-only table allows).

    Already committed rows stay as they are (a resumed round commits again harmlessly);
    a device with no release at all in that round is an error: nothing was reserved for it.
    """
    with session_scope(url) as session:
        commit_in(session, run_id, round_number, device_ids)


def commit_in(session: Session, run_id: str, round_number: int, device_ids: Iterable[int],
              kind: EventKind | None = None) -> None:
    """:func:`commit` in the caller's transaction, optionally only the releases of `kind`
    (a collection commits its randomized releases together with its information rows,
    and leaves the round's training releases to the round's own commit)."""
    _check_run(run_id, round_number)
    ids = sorted(set(_device_ids(device_ids)))
    if not ids:
        return
    charged: set[int] = set()
    of_kind = () if kind is None else (PrivacyEvent.kind == EventKind(kind).value,)
    for chunk in in_chunks(ids):
        where = (PrivacyEvent.run_id == run_id, PrivacyEvent.round_number == round_number,
                 PrivacyEvent.device_id.in_(chunk), *of_kind)
        charged.update(session.scalars(select(PrivacyEvent.device_id).where(*where)))
        session.execute(update(PrivacyEvent).where(*where, PrivacyEvent.status == "reserved")
                        .values(status="committed", committed_at=utcnow()))
    missing = [i for i in ids if i not in charged]
    if missing:
        what = "" if kind is None else f"{EventKind(kind).value} "
        raise RegistryError("privacy ledger", f"device {missing[0]} has no reserved {what}"
                            f"release in run {run_id} round {round_number}; only a "
                            "reserved release can be committed")


def commit_through(url: str, run_id: str, last_round: int) -> int:
    """reserved -> committed for every release of `run_id` up to `last_round`; the count.

    On resume: a server killed between a round's checkpoint and its commit left that
    round's rows reserved, yet the checkpoint holds its aggregate, so the release happened.
    Rounds after the checkpoint stay reserved (still spent) until their redo commits them.
    """
    _check_run(run_id, last_round)
    with session_scope(url) as session:
        result = session.execute(update(PrivacyEvent).where(
            PrivacyEvent.run_id == run_id, PrivacyEvent.round_number <= last_round,
            PrivacyEvent.status == "reserved").values(status="committed",
                                                      committed_at=utcnow()))
        return int(getattr(result, "rowcount", 0) or 0)


def eligible(url: str, device_ids: Iterable[int], planned: DpEvent | Sequence[DpEvent],
             delta: float, default_cap: float | None, *, run_id: str | None = None,
             round_number: int | None = None) -> tuple[list[int], list[Refusal]]:
    """Read-only pre-check for selection (no rows written; `reserve` decides for real).

    Vectorised over the fleet: one RDP pass per distinct plan, the PLD history check only
    for devices RDP calls over. With `run_id` and `round_number` (a resumed round), a
    planned event whose (device, run, round, kind) row already exists is spent already and
    is not counted again. The eligible list keeps the order of `device_ids`.
    """
    ids = _device_ids(device_ids)
    events = _planned(planned)
    delta = check_delta(delta)
    default_cap = _check_cap(default_cap)
    if (run_id is None) != (round_number is None):
        raise ValueError("give both run_id and round_number, or neither")
    if run_id is not None and round_number is not None:
        _check_run(run_id, round_number)
    if not ids:
        return [], []
    refused: dict[int, Refusal] = {}
    with session_scope(url) as session:
        devices = _devices(session, ids)
        budgets = _vectors(session, ids)
        done = _existing(session, run_id, round_number, list(devices)) \
            if run_id is not None and round_number is not None else {}
        by_plan: dict[tuple[DpEvent, ...], list[int]] = defaultdict(list)
        for i in devices:
            left = tuple(e for e in events if e.kind.value not in done.get(i, {}))
            if left and _cap_for(devices[i], default_cap) is not None:
                by_plan[left].append(i)
        for plan, group in by_plan.items():
            vecs = np.stack([_decode(budgets[i]) if i in budgets else np.zeros_like(ORDERS)
                             for i in group]) + rdp_vector(plan)
            rdp_eps = _epsilons(vecs, [_delta_for(devices[i], delta) for i in group])
            for i, eps in zip(group, rdp_eps, strict=True):
                cap = _cap_for(devices[i], default_cap)
                assert cap is not None
                if eps > cap:
                    refusal = _refusal_by_history(session, devices[i], plan, cap,
                                                  _delta_for(devices[i], delta))
                    if refusal is not None:
                        refused[i] = refusal
    return [i for i in ids if i not in refused], [refused[i] for i in ids if i in refused]


def _devices(session: Session, ids: Sequence[int]) -> dict[int, Device]:
    devices: dict[int, Device] = {}
    for chunk in in_chunks(sorted(set(ids))):
        devices.update((d.id, d) for d in session.scalars(
            select(Device).where(Device.id.in_(chunk))))
    missing = [i for i in ids if i not in devices]
    if missing:
        raise RegistryError("device", f"no registry device with id {missing[0]}")
    return devices


def _epsilons(vectors: np.ndarray, deltas: Sequence[float]) -> np.ndarray:
    """RDP epsilon per row, one vectorised pass per distinct delta."""
    out = np.empty(len(deltas))
    d = np.asarray(deltas, dtype=float)
    for value in np.unique(d):
        mask = d == value
        out[mask] = epsilon_from_rdp(vectors[mask], float(value))
    return out


def budget_state(url: str, device_id: int, delta: float) -> BudgetState:
    """A device's spend over every release it was ever charged (reserved or committed)."""
    (device_id,) = _device_ids([device_id])
    delta = check_delta(delta)
    with session_scope(url) as session:
        device = session.get(Device, device_id)
        if device is None:
            raise RegistryError("device", f"no registry device with id {device_id}")
        return _state(session, device, delta)


def _state(session: Session, device: Device, delta: float) -> BudgetState:
    delta = _delta_for(device, delta)
    history = _history(session, device.id)
    budget = session.get(DeviceBudget, device.id)
    vector = _decode(budget) if budget is not None else np.zeros_like(ORDERS)
    return BudgetState(device_id=device.id, name=device.name, epsilon=_spent(history, delta),
                       epsilon_rdp=float(epsilon_from_rdp(vector, delta)), delta=delta,
                       epsilon_cap=device.epsilon_cap,
                       rounds=len({(e.run_id, e.round_number) for e in history}),
                       events=tuple(history))


def device_events(url: str, device_id: int) -> list[LedgerEvent]:
    """Every ledger row of a device, oldest first (no accounting)."""
    (device_id,) = _device_ids([device_id])
    with session_scope(url) as session:
        return _history(session, device_id)


def budget_states(url: str, delta: float, device_ids: Iterable[int] | None = None
                  ) -> list[BudgetState]:
    """Every device's state (or the given ones), in id order: `fedmsr budget show`."""
    delta = check_delta(delta)
    with session_scope(url) as session:
        stmt = select(Device).order_by(Device.id)
        if device_ids is not None:
            stmt = stmt.where(Device.id.in_(_device_ids(device_ids)))
        return [_state(session, d, delta) for d in session.scalars(stmt)]


def fleet_rdp_epsilons(url: str, delta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(device ids, RDP epsilon, cap) for every device with a cached vector: the hot path.

    The epsilon is the RDP bound (>= the reported figure): what metrics and the benchmark
    read for a whole fleet in one pass. Devices without a cap get cap = +inf. One plain
    driver query (no ORM objects: 10,000 rows of 1.3 kB each), the blobs joined into one
    matrix, one NumPy conversion per distinct delta.
    """
    delta = check_delta(delta)
    rows = _fleet_rows(url)
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0)
    ids, blobs, same_grid, caps, delta_caps = zip(*rows, strict=True)
    if not all(same_grid):
        raise RegistryError("device_budgets", "an RDP vector was computed on another order "
                            "grid than privacy.accounting.ORDERS")
    vectors = np.frombuffer(b"".join(blobs), dtype="<f8").reshape(len(rows), -1)
    deltas = [d if d is not None else delta for d in delta_caps]
    cap = np.array([c if c is not None else np.inf for c in caps], dtype=np.float64)
    return np.array(ids, dtype=np.int64), _epsilons(vectors, deltas), cap


#: Schemas already checked in this process (the hot path skips the Alembic lookup after).
_SCHEMA_CHECKED: set[str] = set()


def _fleet_rows(url: str) -> list[Any]:
    if url not in _SCHEMA_CHECKED:
        require_schema(url)
        _SCHEMA_CHECKED.add(url)
    try:
        with get_engine(url).connect() as connection:
            return list(connection.execute(text(
                "SELECT b.device_id, b.rdp, b.orders_sha256 = :grid, d.epsilon_cap, d.delta_cap "
                "FROM device_budgets b JOIN devices d ON d.id = b.device_id "
                "ORDER BY b.device_id"), {"grid": ORDERS_SHA256}))
    except DBAPIError as exc:
        raise unreachable(url, exc) from None


def fleet_budgets(url: str, delta: float, default_cap: float | None = None) -> FleetBudgets:
    """Every device not revoked: its RDP bound and cap, and the fleet's reported figures.

    The bound of the cached vector is one NumPy pass; the reported (PLD) epsilon, what
    `fedmsr budget show` prints, at the device's own delta cap else `delta`, is computed
    only for the devices that decide the largest spend and the near-cap / exhausted counts
    (:func:`privacy.accounting.fleet.summarise`), each cached per composition
    (:func:`_reported`). Both are 0 for a device never charged. Cap is the device's own,
    else `default_cap`, else +inf (uncapped).
    """
    delta = check_delta(delta)
    default_cap = _check_cap(default_cap)
    ids, eps, _ = fleet_rdp_epsilons(url, delta)
    bound = dict(zip(ids.tolist(), eps.tolist(), strict=True))
    with session_scope(url) as session:
        rows = session.execute(select(Device.id, Device.epsilon_cap, Device.delta_cap).where(
            Device.status != DeviceStatus.REVOKED.value).order_by(Device.id)).all()
        caps = [c if c is not None else (default_cap if default_cap is not None else np.inf)
                for _, c, _ in rows]

        def reported(index: int) -> float:
            device_id, _, delta_cap = rows[index]
            spent = _reported_epsilons(session, None, {device_id: delta_cap if delta_cap is not None else delta})
            return spent[device_id]

        return summarise([bound.get(i, 0.0) for i, _, _ in rows], caps, reported)


def kind_epsilons(session: Session, kind: EventKind, delta: float,
                  device_ids: Iterable[int]) -> dict[int, float]:
    """Each device's reported (PLD) epsilon at `delta` over its releases of one `kind`
    only (reserved or committed, every run), 0 for a device with none.

    What `fedmsr leakage show` and a collection's figures say a device's randomized
    releases cost, apart from its training. The cached RDP vector sums every kind, so it
    cannot answer this; the rows can, cheaply: one aggregate query per chunk of devices
    (the (device, run, round, kind) index) returns the composition itself, total steps per
    (q, sigma), and devices with the same composition (a fleet collected alike) share one
    cached PLD computation (:func:`_reported`).
    """
    kind = EventKind(kind)
    delta = check_delta(delta)
    return _reported_epsilons(session, kind, dict.fromkeys(_device_ids(device_ids), delta))


def _reported_epsilons(session: Session, kind: EventKind | None,
                       deltas: dict[int, float]) -> dict[int, float]:
    """Each device's reported epsilon at its delta over its releases of `kind` (None: every
    kind), 0 for a device with none, in device id order."""
    ids = sorted(deltas)
    steps: dict[int, dict[tuple[float, float], int]] = defaultdict(dict)
    for chunk in in_chunks(ids):
        stmt = (select(PrivacyEvent.device_id, PrivacyEvent.sample_rate,
                       PrivacyEvent.noise_multiplier, func.sum(PrivacyEvent.steps))
                .where(PrivacyEvent.device_id.in_(chunk))
                .group_by(PrivacyEvent.device_id, PrivacyEvent.sample_rate,
                          PrivacyEvent.noise_multiplier))
        if kind is not None:
            stmt = stmt.where(PrivacyEvent.kind == kind.value)
        for device_id, q, sigma, total in session.execute(stmt):
            steps[device_id][(float(q), float(sigma))] = int(total)
    return {i: _reported(tuple(sorted(steps[i].items())), deltas[i]) if i in steps else 0.0
            for i in ids}


# -- check-in: the device's own ledger against ours ------------------------------------------

def audit_device_report(url: str, device_id: int, report: LedgerReport, *,
                        run_id: str | None = None) -> Disagreement | None:
    """Compare what a device says it spent with what the server charged it.

    The device reporting MORE than the server recorded means the server under-counted (a
    release it never charged): the serious case. Less is expected when the server charged
    releases the device never ran (a reservation before a crash, central DP-FedAvg rounds it
    was not drawn in) but is recorded too. Both go to the audit log as
    "budget.disagreement"; the same figures as the device's last entry are not repeated.
    """
    (device_id,) = _device_ids([device_id])
    if not isinstance(report, LedgerReport):
        raise ValueError(f"report must be a LedgerReport, got {type(report).__name__}")  # noqa: TRY004
    with session_scope(url) as session:
        device = session.get(Device, device_id)
        if device is None:
            raise RegistryError("device", f"no registry device with id {device_id}")
        history = _history(session, device_id)
        server_eps = _spent(history, report.delta)
        direction = _direction(report, server_eps, len(history))
        if direction is None:
            return None
        found = Disagreement(device_id=device_id, direction=direction,
                             device_epsilon=report.epsilon, device_events=report.events,
                             server_epsilon=server_eps, server_events=len(history),
                             delta=report.delta)
        detail = {k: v for k, v in sorted(found.__dict__.items()) if k != "device_id"}
        last = session.scalars(select(AuditEntry.detail).where(
            AuditEntry.device_id == device_id, AuditEntry.action == "budget.disagreement")
            .order_by(AuditEntry.id.desc()).limit(1)).first()
        if last != audit.encode_detail(detail):
            audit.record(session, "budget.disagreement", detail, device_id=device_id,
                         run_id=run_id)
        return found


def _direction(report: LedgerReport, server_eps: float, server_events: int) -> str | None:
    tol = REPORT_RTOL * max(1.0, server_eps)
    if report.events > server_events or report.epsilon > server_eps + tol:
        return "server-under-counted"
    if report.events < server_events or report.epsilon < server_eps - tol:
        return "device-reported-less"
    return None


def ledger_event_count(url: str) -> int:
    """Rows in the ledger (tests, the benchmark)."""
    with session_scope(url) as session:
        return int(session.scalar(select(func.count()).select_from(PrivacyEvent)) or 0)
