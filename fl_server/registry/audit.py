"""The audit log: who did what to which device or run, one way to write an entry.

Every operator action and every accountability event the server notices (enrollment,
revocation, SuperLink registration, budget disagreements, erasure, information alerts,
run starts) is an :class:`~fl_server.registry.models.AuditEntry`. The table is
append-only (the migration's triggers refuse UPDATE and DELETE), so an entry is only ever
added, in the transaction of the change it records: the change and its record commit or
roll back together. The actor is the operator (`FEDMSR_OPERATOR`, else the OS user),
taken here and nowhere else.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from fl_server.registry.db import session_scope
from fl_server.registry.models import AuditEntry, as_utc, utcnow


def operator() -> str:
    """Who acts, for the audit log: `FEDMSR_OPERATOR`, else the OS user."""
    return os.environ.get("FEDMSR_OPERATOR") or getpass.getuser()


def encode_detail(detail: Mapping[str, Any]) -> str:
    """The stored form of an entry's detail (a JSON object), to write or compare with."""
    return json.dumps(dict(detail))


def record(session: Session, action: str, detail: Mapping[str, Any], *,
           device_id: int | None = None, run_id: str | None = None) -> None:
    """Add one entry, by the operator, now, to the session's transaction."""
    session.add(AuditEntry(**_values(action, detail, device_id, run_id, operator(), utcnow())))


def record_many(session: Session, action: str,
                details: Iterable[tuple[int | None, Mapping[str, Any]]], *,
                run_id: str | None = None) -> None:
    """One entry per (device id, detail), all by one actor at one time, in one executemany
    INSERT (a bulk enrollment writes 10,000 of them)."""
    actor, now = operator(), utcnow()
    rows = [_values(action, detail, device_id, run_id, actor, now)
            for device_id, detail in details]
    if rows:
        session.execute(insert(AuditEntry), rows)


def _values(action: str, detail: Mapping[str, Any], device_id: int | None,
            run_id: str | None, actor: str, at: dt.datetime) -> dict[str, Any]:
    return {"at": at, "actor": actor, "action": action,
            "device_id": device_id, "run_id": run_id, "detail": encode_detail(detail)}


def device_trail(session: Session, device_id: int) -> list[dict[str, Any]]:
    """A device's entries, oldest first (what `fedmsr fleet show` lists)."""
    return [{"at": as_utc(e.at).isoformat(), "actor": e.actor, "action": e.action,
             "detail": json.loads(e.detail)}
            for e in session.scalars(select(AuditEntry).where(AuditEntry.device_id == device_id)
                                     .order_by(AuditEntry.id))]


def audit_log(url: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The whole log (or its last `limit` entries), oldest first: `fedmsr fleet audit`."""
    with session_scope(url) as session:
        query = select(AuditEntry).order_by(AuditEntry.id.desc())
        if limit:
            query = query.limit(limit)
        return [{"id": e.id, "at": as_utc(e.at).isoformat(), "actor": e.actor, "action": e.action,
                 "device_id": e.device_id, "run_id": e.run_id, "detail": json.loads(e.detail)}
                for e in reversed(list(session.scalars(query)))]
