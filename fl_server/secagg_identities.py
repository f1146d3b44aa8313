"""The registry-issued identities SecAgg+ devices verify each other's round keys against.

Bell et al.'s malicious-server guard needs every device to know its neighbours' long-term
identities from somewhere the server cannot rewrite. In fedmsr that is the registry's
public enrollment key of each device (the key Flower's SuperNode authentication and the
signed check-in use too). This module writes the table `{device index: OpenSSH public
key}` that devices read:

* in a registry-backed simulation, the run writes it into the run directory each secure
  round (only the devices the check-in admitted, so a device revoked since the last round
  is no longer anyone's neighbour) and the devices, which share the operator's disk, read
  it from there;
* on real devices it is distributed out of band (`fedmsr fleet identities --out FILE`, then
  `--node-config identities-file=FILE`): a device never takes identities from the server's
  messages, which is what stops a server from substituting keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from fl_server.config import RunConfig
from fl_server.registry.db import resolve_url, session_scope
from fl_server.registry.devices import devices_for_indices
from fl_server.registry.identity import BUNDLES_EXTRA
from fl_server.registry.models import DeviceStatus
from privacy.atomic_write import write_text_atomic

IDENTITIES_FILE = "secagg-identities.json"


def identities_table(url: str, device_indices: Iterable[int] | None = None) -> dict[int, str]:
    """Device index -> public key of the not-revoked synthetic-fleet device enrolled for it
    (every enrolled index when `device_indices` is None)."""
    with session_scope(url) as session:
        return {index: device.public_key for index, device
                in devices_for_indices(session, device_indices).items()
                if device.status != DeviceStatus.REVOKED.value}


def write_identities(path: Path, table: dict[int, str]) -> Path:
    """Atomically write the table (JSON object, keys as strings) and return its path."""
    write_text_atomic(path, json.dumps({str(k): v for k, v in sorted(table.items())},
                                       indent=1) + "\n")
    return path


def secagg_credentials(cfg: RunConfig, admitted: Iterable[int]) -> tuple[tuple[str, str], ...]:
    """The setup fields of a registry-backed simulation's secure round: the simulated
    enrollment's bundles and this round's identities table (of the admitted devices).
    Empty without a registry (simulated enrollment) and on a SuperLink, where each device
    brings its own key and identities file."""
    bundles = str(cfg.extra.get(BUNDLES_EXTRA, ""))
    if cfg.device_indices is None or not bundles:
        return ()
    path = write_identities(cfg.run_dir() / IDENTITIES_FILE,
                            identities_table(resolve_url(), admitted))
    return (("bundles-dir", bundles), ("identities-file", str(path.resolve())))
