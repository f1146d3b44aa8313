"""The registry follows every registry-backed run: runs, rounds and who took part.

A :class:`~fl_server.observers.RoundObserver`. The federation loop reports devices by
their synthetic data index; the registry maps an index to the device enrolled for it
(`fl_server.registry.devices`), so participation rows point at device ids and keys, not
at data slots. A device's first round moves it from `enrolled` to `active`.

Each hook is one transaction. A database failure fails the run (it is accountability
data, not a nice-to-have); the round itself is already checkpointed, and on resume the
observer records any finished round the registry is missing from the run's history.
"""

from __future__ import annotations

import json

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fl_server.config import RunConfig
from fl_server.history import read_history
from fl_server.observers import RoundObserver
from fl_server.registry import audit
from fl_server.registry.db import resolve_url, session_scope
from fl_server.registry.devices import devices_for_indices
from fl_server.registry.models import Device, DeviceStatus, Participation, Round, Run, utcnow
from fl_server.run_status import RunStatus
from privacy.wire.round_record import RoundRecord


def registry_observers(cfg: RunConfig) -> list[RoundObserver]:
    """The registry sink, for runs whose fleet came from the registry."""
    return [] if cfg.device_indices is None else [RegistryObserver(resolve_url())]


class RegistryObserver:
    """Writes runs, rounds and round participation into the registry at `url`."""

    def __init__(self, url: str) -> None:
        self.url = url

    def run_started(self, cfg: RunConfig, resumed_after_round: int) -> None:
        with session_scope(self.url) as session:
            run = session.get(Run, cfg.run_id)
            if run is None:
                run = Run(id=cfg.run_id, planned_rounds=cfg.rounds, seed=cfg.seed,
                          dp_sgd=cfg.dp_sgd, started_at=utcnow())
                session.add(run)
            run.status, run.finished_at, run.reason = "running", None, None
            run.config_json = json.dumps(cfg.to_json_dict(), sort_keys=True)
            action = "run.resume" if resumed_after_round else "run.start"
            audit.record(session, action, {"after_round": resumed_after_round,
                                           "devices": cfg.device_indices}, run_id=cfg.run_id)
            session.flush()
            if resumed_after_round:
                for record in read_history(cfg.run_dir()):
                    if record.round <= resumed_after_round:
                        _record_round(session, run, record)

    def round_finished(self, cfg: RunConfig, record: RoundRecord) -> None:
        with session_scope(self.url) as session:
            run = session.get(Run, cfg.run_id)
            if run is None:
                raise RuntimeError(f"run {cfg.run_id} is not in the registry")
            _record_round(session, run, record)

    def run_finished(self, cfg: RunConfig, status: RunStatus) -> None:
        with session_scope(self.url) as session:
            run = session.get(Run, cfg.run_id)
            if run is None:
                return
            run.status, run.finished_at = status.status, utcnow()
            run.completed_rounds, run.reason = status.completed_rounds, status.reason or None


def _record_round(session: Session, run: Run, record: RoundRecord) -> None:
    """Insert one round and its participants (once: a round already recorded is left as is)."""
    number = record.round
    if session.scalars(select(Round).where(Round.run_id == run.id,
                                           Round.number == number)).first() is not None:
        return
    row = Round(run_id=run.id, number=number, loss=record.loss, kl_bits=record.kl_bits,
                utility_acc=record.utility_acc, identity_acc=record.identity_acc,
                sampled=record.sampled, responded=record.responded,
                failed=record.failed, wall_s=record.wall_s, finished_at=utcnow())
    session.add(row)
    session.flush()
    events = {e.device: e for e in record.dp_events}
    devices = devices_for_indices(session, record.devices)
    participants: list[int] = []
    for index in record.devices:
        device = devices.get(int(index))
        if device is None:
            raise RuntimeError(f"device index {index} took part in a round but no registry "
                               "device has it")
        event = events.get(int(index))
        session.add(Participation(round_id=row.id, device_id=device.id, device_index=int(index),
                                  dp_sample_rate=event.sample_rate if event else None,
                                  dp_noise_multiplier=event.noise_multiplier if event else None,
                                  dp_steps=event.steps if event else None))
        participants.append(device.id)
    _activate(session, participants)
    run.completed_rounds = max(run.completed_rounds or 0, number)


def _activate(session: Session, device_ids: list[int]) -> None:
    """enrolled -> active for a round's participants, in one statement decided by the
    database at write time.

    Not a read-then-write of the loaded row: an operator may revoke the device between
    the observer's read and its commit, and writing back `active` would then un-revoke it
    (or, with revoked_at set, trip the CHECK constraint and fail the run). PostgreSQL
    re-checks the WHERE clause after waiting on the revocation's row lock, so a revoked
    device is simply not matched.
    """
    if not device_ids:
        return
    session.execute(update(Device)
                    .where(Device.id.in_(device_ids),
                           Device.status == DeviceStatus.ENROLLED.value)
                    .values(status=DeviceStatus.ACTIVE.value)
                    .execution_options(synchronize_session=False))

