"""Device revocation: for ever, recorded once, whoever races to do it.

A revoked device's key is never accepted again (no path in the registry leads out of
`revoked`): the check-in refuses it, runs stop counting it, SecAgg+ neighbours stop
trusting its key, and on a SuperLink `fedmsr fleet revoke` unregisters the key too. A
replacement for the same footage comes back only under a new enrollment (a new key).
"""

from __future__ import annotations

from typing import Any

from fl_server.registry import audit
from fl_server.registry.db import RegistryError, session_scope
from fl_server.registry.devices import device_dict, find_device
from fl_server.registry.models import DeviceStatus, utcnow


def revoke(url: str, ident: str, reason: str) -> dict[str, Any]:
    """Revoke for ever: the key is never accepted again (no path leads out of `revoked`)."""
    if not reason.strip():
        raise RegistryError("--reason", "is required: say why the device is revoked")
    with session_scope(url) as session:
        device = find_device(session, ident)
        # Lock the row (PostgreSQL) and re-read it: two concurrent revocations then record
        # one revocation and one "already revoked", never two audit entries.
        session.refresh(device, with_for_update=True)
        if device.status == DeviceStatus.REVOKED.value:
            raise RegistryError("ID", f"device {device.id} ({device.name}) was already revoked "
                                f"at {device.revoked_at:%Y-%m-%d %H:%M:%S}")
        device.status, device.revoked_at = DeviceStatus.REVOKED.value, utcnow()
        device.revoke_reason = reason.strip()
        audit.record(session, "device.revoke", {"reason": device.revoke_reason,
                                                "key_fingerprint": device.key_fingerprint},
                     device_id=device.id)
        session.flush()
        return device_dict(device)
