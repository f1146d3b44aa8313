"""Where uploaded representations live, and the only way to read them back.

:class:`RepresentationStore` is the small interface the collection and the leakage
tracker use (add, select, versions, erase a device). :class:`DatabaseStore` keeps
everything in the registry's `representations` table, payloads inline. Moving payloads to
an object store means another implementation of the same four methods (rows keep the
metadata and an object key; blobs go to the bucket); no caller changes.

**Encoder versions are never mixed silently.** Every row names the exact global model
that produced it (`fl_client.uploads.encoder_version`) and the payload format version.
`select` takes the version the caller wants; a caller that asks without one gets the rows
only if they all come from one version, otherwise :class:`MixedEncoderVersions` names the
versions found. Representations of two models live in two different spaces: pooling them
would make every downstream number (probes, leakage curves) meaningless.

**Consent.** :func:`erase_device` deletes every representation of a device and audit-logs
it; the device's ledgers (DP and information) stay: they are accounting, not data.

**Unlinkable collection** stores in its own table through :class:`UnlinkableStore`: rows
with no device, which no per-device reader (the tracker, erase) may pool with the rest.
Erase cannot reach them: nothing says whose they are (docs/representations.md).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from fl_server.registry import audit
from fl_server.registry.db import RegistryError, session_scope
from fl_server.registry.devices import find_device
from fl_server.registry.models import Representation, UnlinkableRepresentation, as_utc
from privacy.payload import decode_payload


class MixedEncoderVersions(RegistryError):
    """A read would have pooled representations of different encoder versions."""

    def __init__(self, versions: dict[str, int]) -> None:
        listed = ", ".join(f"{v[:12]} ({n} rows)" for v, n in sorted(versions.items()))
        super().__init__("encoder_version", f"the representations asked for come from "
                         f"{len(versions)} encoder versions ({listed}); pass one version")
        self.versions = versions


@dataclass(frozen=True)
class NewRepresentation:
    """One clip's upload as the server received it (payload = privacy.payload v1 bytes)."""

    device_id: int
    run_id: str
    collection_round: int
    clip_id: str
    captured_day: int
    captured_hour: int | None  # None: the footage gave no hour of capture
    payload: bytes
    encoder_version: str


@dataclass(frozen=True)
class StoredRepresentation(NewRepresentation):
    """A stored row: what was received, plus its id, payload format version and time."""

    id: int
    payload_version: int
    stored_at: dt.datetime


@dataclass(frozen=True)
class RepresentationQuery:
    """Which rows to read. `encoder_version=None` is allowed only when one version matches."""

    encoder_version: str | None
    device_ids: tuple[int, ...] | None = None
    run_id: str | None = None


class RepresentationStore(Protocol):
    def add(self, session: Session, rows: Sequence[NewRepresentation]) -> int:
        """Store rows (a row already stored for the same device/run/round/clip is kept)."""

    def select(self, session: Session, query: RepresentationQuery
               ) -> list[StoredRepresentation]:
        """Rows of ONE encoder version, ordered by device, round, clip."""

    def versions(self, session: Session, device_ids: Sequence[int] | None = None,
                 run_id: str | None = None) -> dict[str, int]:
        """Encoder version -> row count, over the rows the filters match."""

    def erase_device(self, session: Session, device_id: int) -> int:
        """Delete every representation of one device; the number deleted."""


def payload_version(payload: bytes) -> int:
    """The format version of a payload, after checking the whole payload decodes."""
    try:
        decode_payload(payload)
    except ValueError as exc:
        raise RegistryError("payload", f"refusing to store a malformed payload: {exc}") from None
    return payload[4]


class DatabaseStore:
    """The registry table `representations`, payloads inline (LargeBinary / bytea)."""

    def add(self, session: Session, rows: Sequence[NewRepresentation]) -> int:
        if not rows:
            return 0
        keys = {(r.device_id, r.run_id, r.collection_round) for r in rows}
        existing = set()
        for device_id, run_id, round_number in keys:
            existing |= {(device_id, run_id, round_number, clip) for clip in session.scalars(
                select(Representation.clip_id).where(
                    Representation.device_id == device_id, Representation.run_id == run_id,
                    Representation.collection_round == round_number))}
        new = [r for r in rows
               if (r.device_id, r.run_id, r.collection_round, r.clip_id) not in existing]
        session.add_all(Representation(
            device_id=r.device_id, run_id=r.run_id, collection_round=r.collection_round,
            clip_id=r.clip_id, captured_day=r.captured_day, captured_hour=r.captured_hour,
            payload=r.payload, payload_version=payload_version(r.payload),
            encoder_version=r.encoder_version) for r in new)
        session.flush()
        return len(new)

    def select(self, session: Session, query: RepresentationQuery
               ) -> list[StoredRepresentation]:
        found = self.versions(session, query.device_ids, query.run_id)
        version = query.encoder_version
        if version is None:
            if len(found) > 1:
                raise MixedEncoderVersions(found)
            if not found:
                return []
            version = next(iter(found))
        statement = _filtered(select(Representation), query.device_ids, query.run_id).where(
            Representation.encoder_version == version).order_by(
            Representation.device_id, Representation.collection_round, Representation.clip_id)
        return [_stored(row) for row in session.scalars(statement)]

    def versions(self, session: Session, device_ids: Sequence[int] | None = None,
                 run_id: str | None = None) -> dict[str, int]:
        statement = _filtered(select(Representation.encoder_version, func.count()),
                              device_ids, run_id).group_by(Representation.encoder_version)
        return {version: int(n) for version, n in session.execute(statement)}

    def erase_device(self, session: Session, device_id: int) -> int:
        result = session.execute(delete(Representation).where(
            Representation.device_id == device_id))
        return int(getattr(result, "rowcount", 0) or 0)  # a CursorResult; typed as Result


def _filtered(statement: Any, device_ids: Sequence[int] | None, run_id: str | None) -> Any:
    if device_ids is not None:
        statement = statement.where(Representation.device_id.in_(list(device_ids)))
    if run_id is not None:
        statement = statement.where(Representation.run_id == run_id)
    return statement


def _stored(row: Representation) -> StoredRepresentation:
    return StoredRepresentation(
        id=row.id, device_id=row.device_id, run_id=row.run_id,
        collection_round=row.collection_round, clip_id=row.clip_id,
        captured_day=row.captured_day, captured_hour=row.captured_hour,
        payload=bytes(row.payload), payload_version=row.payload_version,
        encoder_version=row.encoder_version, stored_at=as_utc(row.stored_at))


# -- unlinkable collection ----------------------------------------------------------------


@dataclass(frozen=True)
class NewUnlinkable:
    """One representation collected through the shuffler: no device, no clip id, no hour."""

    run_id: str
    collection_round: int
    pseudonym: str  # 16 random bytes (hex) the device drew for this record alone
    window_day: int | None  # first day of the capture window; None: capture time dropped
    granularity_days: int
    payload: bytes
    encoder_version: str


@dataclass(frozen=True)
class StoredUnlinkable(NewUnlinkable):
    id: int
    payload_version: int
    stored_at: dt.datetime


class UnlinkableStore:
    """The registry table `unlinkable_representations` (no device column to group by)."""

    def add(self, session: Session, rows: Sequence[NewUnlinkable]) -> int:
        session.add_all(UnlinkableRepresentation(
            run_id=r.run_id, collection_round=r.collection_round, pseudonym=r.pseudonym,
            window_day=r.window_day, granularity_days=r.granularity_days, payload=r.payload,
            payload_version=payload_version(r.payload), encoder_version=r.encoder_version)
            for r in rows)
        session.flush()
        return len(rows)

    def select(self, session: Session, run_id: str | None, encoder_version: str
               ) -> list[StoredUnlinkable]:
        """One run's rows (every run's: None) of one encoder version, in pseudonym order
        (random)."""
        statement = select(UnlinkableRepresentation).where(
            UnlinkableRepresentation.encoder_version == encoder_version).order_by(
            UnlinkableRepresentation.pseudonym)
        if run_id is not None:
            statement = statement.where(UnlinkableRepresentation.run_id == run_id)
        return [StoredUnlinkable(
            id=row.id, run_id=row.run_id, collection_round=row.collection_round,
            pseudonym=row.pseudonym, window_day=row.window_day,
            granularity_days=row.granularity_days, payload=bytes(row.payload),
            payload_version=row.payload_version, encoder_version=row.encoder_version,
            stored_at=as_utc(row.stored_at)) for row in session.scalars(statement)]

    def versions(self, session: Session) -> dict[str, int]:
        """Encoder version -> row count."""
        statement = select(UnlinkableRepresentation.encoder_version, func.count()).group_by(
            UnlinkableRepresentation.encoder_version)
        return {version: int(n) for version, n in session.execute(statement)}


def default_store() -> RepresentationStore:
    """The store this installation uses (the registry database)."""
    return DatabaseStore()


def load(url: str, query: RepresentationQuery,
         store: RepresentationStore | None = None) -> list[StoredRepresentation]:
    """Read representations of one encoder version (see :class:`RepresentationQuery`)."""
    with session_scope(url) as session:
        return (store or default_store()).select(session, query)


def erase_device(url: str, ident: str, store: RepresentationStore | None = None
                 ) -> dict[str, Any]:
    """Consent withdrawn: delete every stored representation of a device (one transaction).

    The device also stops being asked for uploads (`consent_evaluation` becomes false);
    its DP and information ledgers stay, and the audit log records who erased how many.
    """
    with session_scope(url) as session:
        device = find_device(session, ident)
        erased = (store or default_store()).erase_device(session, device.id)
        device.consent_evaluation = False
        audit.record(session, "device.erase", {"representations_deleted": erased,
                                               "consent_evaluation": False},
                     device_id=device.id)
        session.flush()
        return {"id": device.id, "name": device.name, "deleted": erased}
