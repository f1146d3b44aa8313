"""The server's information ledger: bits each device's uploaded representations may reveal.

A device charges each uploaded clip its KL rate KL(q(z|x) || N(0, I)) in bits and reports
the batch's charge (whole bits, rounded up). The server appends one row per device and
collection (`information_ledger`, append-only at the database level) and reads a device's
total as the sum of its rows. Each upload is a fresh sample of q(z|x) that depends on its
own clip only, so the total is an upper bound on the mutual information between all the
device's stored representations and its clips (docs/representations.md) — a bound on what
*any* attacker holding them can learn, whatever it computes.

Enforcement mirrors the DP budget: the device refuses to send past its cap (it knows the
exact rates), and the server stops asking a device whose next batch would pass the cap by
its estimate, or whose own cap already stopped it at the cap now in force.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fl_server.registry.models import Device, InformationEntry

#: Without a configured alert level, a device is flagged at this fraction of its cap.
ALERT_FRACTION = 0.9


@dataclass(frozen=True)
class Charge:
    """One collection's charge to one device, as the server records it."""

    device_id: int
    run_id: str
    collection_round: int
    encoder_version: str
    requested: int
    clips: int
    bits: int
    device_bits_before: int
    capped: bool
    cap_bits: float | None


@dataclass(frozen=True)
class InfoState:
    """A device's information spend as the ledger knows it."""

    bits: int
    clips: int
    collections: int
    capped_at: float | None  # the cap in force when the device's own cap last stopped it


def effective_cap(device_cap: float | None, run_cap: float) -> float | None:
    """The smaller of the device's registry cap and the run's (0 = no run cap)."""
    caps = [c for c in (device_cap, run_cap or None) if c is not None]
    return min(caps) if caps else None


def alert_level(cap: float | None, configured: float) -> float | None:
    """Bits at which a device is flagged: the configured level, else 90% of its cap."""
    if configured > 0:
        return configured
    return None if cap is None else ALERT_FRACTION * cap


def stop_reason(state: InfoState, cap: float | None, expected_bits: int) -> str | None:
    """Why the server must not ask this device for its next batch (None: ask it)."""
    if cap is None:
        return None
    if state.capped_at is not None and cap <= state.capped_at:
        return f"its own cap stopped its last upload at {state.capped_at:g} bits"
    if state.bits + expected_bits > cap:
        return (f"{state.bits} bits spent + ~{expected_bits} for the next batch would pass "
                f"its cap of {cap:g} bits")
    return None


def expected_batch_bits(mean_rate_bits: float, clips: int) -> int:
    """The server's estimate of a batch's charge: mean rate on its own clips x M, rounded up."""
    return math.ceil(max(0.0, mean_rate_bits) * clips)


def states(session: Session, device_ids: Iterable[int]) -> dict[int, InfoState]:
    """Every listed device's spend (zero for a device with no rows)."""
    ids = sorted(set(device_ids))
    out = {i: InfoState(0, 0, 0, None) for i in ids}
    if not ids:
        return out
    totals = session.execute(select(
        InformationEntry.device_id, func.sum(InformationEntry.bits),
        func.sum(InformationEntry.clips), func.count()).where(
        InformationEntry.device_id.in_(ids)).group_by(InformationEntry.device_id))
    for device_id, bits, clips, n in totals:
        out[device_id] = InfoState(int(bits), int(clips), int(n), None)
    capped = session.execute(select(InformationEntry.device_id, InformationEntry.cap_bits).where(
        InformationEntry.device_id.in_(ids), InformationEntry.capped.is_(True))
        .order_by(InformationEntry.id))
    for device_id, cap_bits in capped:  # the latest capped row wins
        state = out[device_id]
        out[device_id] = InfoState(state.bits, state.clips, state.collections,
                                   float("inf") if cap_bits is None else float(cap_bits))
    return out


def collected(session: Session, run_id: str, collection_round: int) -> set[int]:
    """Devices already charged for this collection (a redone round does not ask again)."""
    return set(session.scalars(select(InformationEntry.device_id).where(
        InformationEntry.run_id == run_id,
        InformationEntry.collection_round == collection_round)))


def append(session: Session, charges: Sequence[Charge]) -> None:
    """Append the collection's rows (in the caller's transaction)."""
    session.add_all(InformationEntry(
        device_id=c.device_id, run_id=c.run_id, collection_round=c.collection_round,
        encoder_version=c.encoder_version, requested=c.requested, clips=c.clips, bits=c.bits,
        device_bits_before=c.device_bits_before, capped=c.capped, cap_bits=c.cap_bits)
        for c in charges)
    session.flush()


def entries(session: Session, device_id: int) -> list[InformationEntry]:
    return list(session.scalars(select(InformationEntry).where(
        InformationEntry.device_id == device_id).order_by(InformationEntry.id)))


def fleet_bits(session: Session) -> list[float]:
    """Every device's total bits, revoked ones included (`fedmsr monitor`'s distribution)."""
    totals = dict(session.execute(select(InformationEntry.device_id,
                                         func.sum(InformationEntry.bits))
                                  .group_by(InformationEntry.device_id)).all())
    ids = session.scalars(select(Device.id).order_by(Device.id))
    return [float(totals.get(device_id, 0)) for device_id in ids]
