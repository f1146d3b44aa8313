"""Device lookups: by id or name, by data index, and which devices a run may use.

**The data-index rule, in one place.** A run and its round history name devices by their
synthetic data index (Flower's `partition-id`, `--node-config device-index=N`); the
registry holds devices. Enrollment gives an index to at most one device that is not
revoked, but a revoked device's index may be enrolled again (a replacement for the same
footage). So the device *for* an index is the synthetic-fleet device enrolled for it that
is not revoked, else the newest one that held it: a round recorded, charged or keyed
after a revocation still names the device that took part.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from fl_server.registry.audit import device_trail
from fl_server.registry.db import RegistryError, in_chunks, session_scope
from fl_server.registry.models import Device, DeviceStatus, Participation, as_utc
from privacy.checks import is_int


def find_device(session: Session, ident: str) -> Device:
    """A device by numeric id or by name."""
    device = None
    if ident.isdigit():
        device = session.get(Device, int(ident))
    if device is None:
        device = session.scalars(select(Device).where(Device.name == ident)).first()
    if device is None:
        raise RegistryError("ID", f"no device {ident!r} in the registry; "
                            "`fedmsr fleet list` shows the enrolled devices")
    return device


def device_dict(device: Device) -> dict[str, Any]:
    return {
        "id": device.id, "name": device.name, "profile": device.profile,
        "status": device.status, "device_index": device.device_index,
        "data_source": device.data_source, "key_fingerprint": device.key_fingerprint,
        "consent_training": device.consent_training,
        "consent_evaluation": device.consent_evaluation,
        "epsilon_cap": device.epsilon_cap, "delta_cap": device.delta_cap,
        "info_bits_cap": device.info_bits_cap,
        "created_at": as_utc(device.created_at).isoformat(),
        "revoked_at": as_utc(device.revoked_at).isoformat() if device.revoked_at else None,
        "revoke_reason": device.revoke_reason,
        "superlink_node_id": device.superlink_node_id,
        "superlink_unregistered": device.superlink_unregistered_at is not None,
    }


def list_devices(url: str) -> list[dict[str, Any]]:
    with session_scope(url) as session:
        return [device_dict(d) for d in session.scalars(select(Device).order_by(Device.id))]


def show_device(url: str, ident: str) -> dict[str, Any]:
    """A device with its public key, its audit trail and how many rounds it took part in."""
    with session_scope(url) as session:
        device = find_device(session, ident)
        out = device_dict(device)
        out["public_key"] = device.public_key
        out["rounds"] = session.scalar(select(func.count()).select_from(Participation).where(
            Participation.device_id == device.id))
        out["audit"] = device_trail(session, device.id)
        return out


# -- the data-index rule -------------------------------------------------------------------

def _synthetic() -> ColumnElement[bool]:
    return Device.data_source == "synthetic"


def _live() -> ColumnElement[bool]:
    return Device.status != DeviceStatus.REVOKED.value


def _holders(session: Session, indices: Iterable[int] | None, column: Any) -> dict[int, Any]:
    """Data index -> `column` of the device for it (see the module docstring), for
    `indices` (every index when None); an index no device ever held is left out."""
    revoked_last = case((_live(), 0), else_=1)
    query = select(Device.device_index, column).where(_synthetic(),
                                                       Device.device_index.is_not(None))
    order = (Device.device_index, revoked_last, Device.id.desc())
    queries = [query] if indices is None else [
        query.where(Device.device_index.in_(chunk)) for chunk in in_chunks(sorted(set(indices)))]
    out: dict[int, Any] = {}
    for q in queries:
        for index, value in session.execute(q.order_by(*order)):
            out.setdefault(int(index), value)
    return out


def devices_for_indices(session: Session, indices: Iterable[int] | None) -> dict[int, Device]:
    """Data index -> the device for it (every index ever enrolled when `indices` is None)."""
    return _holders(session, indices, Device)


def device_ids_for_indices(url: str, indices: Iterable[int]) -> dict[int, int]:
    """Data index -> registry device id, in one query; an index no device holds is an error."""
    wanted = list(indices)
    for i in wanted:
        if not is_int(i):
            raise ValueError(f"device indices must be ints, got {i!r}")
    with session_scope(url) as session:
        out = _holders(session, [int(i) for i in wanted], Device.id)
    missing = sorted(i for i in set(wanted) if i not in out)
    if missing:
        raise RegistryError("device", f"no registry device has synthetic index {missing[0]}")
    return out


def eligible_indices(url: str, fleet_size: int) -> list[int]:
    """Synthetic device indices a run may use: enrolled or active, consenting, below fleet_size."""
    with session_scope(url) as session:
        return sorted(session.scalars(select(Device.device_index).where(
            _live(), _synthetic(), Device.consent_training.is_(True),
            Device.device_index < fleet_size)))


def bundle_dirs(url: str, indices: Iterable[int]) -> dict[str | None, list[int]]:
    """Bundle directory (None: not recorded, enrolled before 0005_bundles) -> the live
    devices' indices whose bundles were written there."""
    wanted = [int(i) for i in indices]
    out: dict[str | None, list[int]] = {}
    with session_scope(url) as session:
        for chunk in in_chunks(wanted):
            for where, index in session.execute(select(Device.bundle_dir, Device.device_index)
                                                .where(_live(), _synthetic(),
                                                       Device.device_index.in_(chunk))):
                if index is not None:
                    out.setdefault(where, []).append(index)
    return {k: sorted(v) for k, v in out.items()}
