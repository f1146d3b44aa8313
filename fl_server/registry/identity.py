"""App-level device identity at check-in: a fresh nonce per round, verified signatures.

Each round's check-in query carries a challenge (a 256-bit nonce, the run id, and in
simulation the directory of the simulated enrollment's bundles). A device answers with its
registry device id and an ECDSA-SHA384 signature, made with its enrollment key, over
(nonce, run id, its Flower node id, every other field of its answer)
(`privacy.wire.checkin.checkin_statement`). The server
admits a node only if the registry holds that device, not revoked, for the data index the
node reports, among the run's devices, and the signature verifies with the registry's
public key for the node id the reply came from. That binds Flower node id <-> device id
for the round; every other node takes no part, and is counted and logged.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from flwr.serverapp import Grid
from sqlalchemy import select

from fl_server.config import RunConfig
from fl_server.registry.db import resolve_url, session_scope
from fl_server.registry.devices import eligible_indices
from fl_server.registry.models import Device, DeviceStatus
from privacy.wire.checkin import Challenge, CheckinAnswer, checkin_statement
from strategies.messaging import wait_for_nodes

log = logging.getLogger("fedmsr.checkin")
#: Where `fedmsr run` records the simulated enrollment's bundles (RunConfig.extra).
BUNDLES_EXTRA = "bundles_dir"
#: Where `fedmsr run --superlink` records the SuperLink a run is deployed on (RunConfig.extra).
SUPERLINK_EXTRA = "superlink"
#: How often a round waiting for its devices counts them again.
RECOUNT_S = 1.0
#: The end of the refusal of a node whose device index the registry left out of the run.
NOT_IN_RUN = "is not among the run's devices"
#: Run id -> the (node, refusal) pairs already logged: a refusal is logged once per run.
_ANNOUNCED: dict[str, set[tuple[int, str]]] = {}


@dataclass
class CheckinGate:
    """One round's challenge and the verification of the answers to it."""

    url: str
    run_id: str
    allowed: frozenset[int]
    bundles_dir: str = ""
    nonce: str = field(default_factory=lambda: secrets.token_hex(32))
    refused: dict[int, str] = field(default_factory=dict)
    #: Node id -> registry device id of every node admitted by :meth:`admit`.
    admitted_ids: dict[int, int] = field(default_factory=dict)
    #: Synthetic fleet size, and whether the nodes are a SuperLink's (not virtual ones).
    fleet_size: int = 0
    on_superlink: bool = False

    @classmethod
    def for_config(cls, cfg: RunConfig) -> CheckinGate | None:
        """A gate for registry-backed runs; None (everyone who answers) without a registry."""
        if cfg.device_indices is None:
            return None
        return cls(resolve_url(), cfg.run_id, frozenset(cfg.device_indices),
                   str(cfg.extra.get(BUNDLES_EXTRA, "")), fleet_size=cfg.devices,
                   on_superlink=bool(cfg.extra.get(SUPERLINK_EXTRA)))

    def expected_nodes(self) -> int:
        """In simulation every synthetic index is a virtual SuperNode; on a SuperLink only
        the run's devices that are still eligible run one (a revoked one is cut off)."""
        if not self.on_superlink:
            return self.fleet_size
        return len(self.allowed & set(eligible_indices(self.url, self.fleet_size)))

    def wait_for_devices(self, grid: Grid, timeout_s: float) -> list[int]:
        """Node ids once the expected nodes are connected, or whoever is there at the deadline.

        The count is taken again every `RECOUNT_S`, so a device revoked while the round
        waits is not waited for.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            wanted = self.expected_nodes()
            remaining = deadline - time.monotonic()
            nodes = wait_for_nodes(grid, wanted, min(RECOUNT_S, max(remaining, 0.0)))
            if len(nodes) >= wanted or remaining <= RECOUNT_S:
                return nodes

    def challenge(self) -> Challenge:
        return Challenge(self.nonce, self.run_id, self.bundles_dir)

    def admit(self, answers: Mapping[int, CheckinAnswer]) -> dict[int, int]:
        """Node id -> device index for the nodes that proved who they are."""
        ids = {a.device_id for a in answers.values() if a.device_id is not None}
        with session_scope(self.url) as session:
            devices = {d.id: _Enrolled(d.status, d.device_index, d.public_key, d.name,
                                       d.key_fingerprint) for d in session.scalars(
                select(Device).where(Device.id.in_(ids)))} if ids else {}
        admitted: dict[int, int] = {}
        for node_id, answer in answers.items():
            problem = self._problem(node_id, answer, devices)
            if problem:
                self.refused[node_id] = problem
            else:
                admitted[node_id] = answer.device
                assert answer.device_id is not None  # _problem refuses an unsigned answer
                self.admitted_ids[node_id] = answer.device_id
        self._log_refusals()
        return admitted

    def _log_refusals(self) -> None:
        """Warn about each refusal once per run, not every round. In simulation every
        synthetic index is a virtual SuperNode, so the indices the registry left out of the
        run are refused every round by design: the run's header names them (`fedmsr run`),
        and they are logged at debug level only."""
        announced = _ANNOUNCED.setdefault(self.run_id, set())
        fresh = {n: p for n, p in self.refused.items() if (n, p) not in announced}
        announced.update(fresh.items())
        expected = {n: p for n, p in fresh.items()
                    if not self.on_superlink and p.endswith(NOT_IN_RUN)}
        if expected:
            log.debug("check-in left out %d node(s) of devices not in the run", len(expected))
        unexpected = {n: p for n, p in fresh.items() if n not in expected}
        if unexpected:
            log.warning("check-in refused %d node(s): %s", len(unexpected),
                        "; ".join(f"node {n}: {p}" for n, p in sorted(unexpected.items())))

    def revoked_since_admission(self, node_ids: Iterable[int]) -> dict[int, str]:
        """Node id -> why, for the admitted nodes whose device has been revoked since it
        checked in. A revocation is for ever and says the device is not to be trusted (lost,
        stolen, compromised): its update is dropped even though it was eligible when it
        trained (docs/registry.md)."""
        wanted = {node: self.admitted_ids[node] for node in node_ids
                  if node in self.admitted_ids}
        if not wanted:
            return {}
        with session_scope(self.url) as session:
            revoked = set(session.scalars(select(Device.id).where(
                Device.id.in_(set(wanted.values())),
                Device.status == DeviceStatus.REVOKED.value)))
        return {node: f"device {device_id} was revoked after it checked in"
                for node, device_id in wanted.items() if device_id in revoked}

    def _problem(self, node_id: int, answer: CheckinAnswer,
                 devices: Mapping[int, _Enrolled]) -> str:
        index = answer.device
        if index not in self.allowed:
            return f"device index {index} {NOT_IN_RUN}"
        if answer.device_id is None or not answer.signature:
            return "no signed answer (no enrollment key on the node)"
        device_id = answer.device_id
        if device_id not in devices:
            return f"device id {device_id} is not in the registry"
        enrolled = devices[device_id]
        if enrolled.status == DeviceStatus.REVOKED.value:
            return f"device {device_id} is revoked"
        if enrolled.device_index != index:
            return (f"device {device_id} is enrolled for index {enrolled.device_index}, "
                    f"not {index}")
        key = load_ssh_public_key(enrolled.public_key.encode())
        assert isinstance(key, ec.EllipticCurvePublicKey)
        try:
            key.verify(bytes.fromhex(answer.signature),
                       checkin_statement(self.nonce, self.run_id, node_id, answer),
                       ec.ECDSA(hashes.SHA384()))
        except (InvalidSignature, ValueError):
            return (f"signature of device {device_id} does not verify for node {node_id} "
                    f"with the registry's key {enrolled.key_fingerprint}"
                    + self._signed_with(index))
        return ""

    def _signed_with(self, index: int) -> str:
        """In simulation: which bundle the node signed with (the one under `bundles_dir`
        for its data index, as the device looks it up), and that bundle's key."""
        if not self.bundles_dir:
            return " (the node's own --node-config device-key)"
        for info_path in sorted(Path(self.bundles_dir).glob("*/device.json")):
            try:
                info = json.loads(info_path.read_text())
                if int(info["device_index"]) == index:
                    return (f"; the node signed with {info_path.parent / 'device.key'} "
                            f"(key {info.get('key_fingerprint', 'unknown')})")
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return f"; no bundle under {self.bundles_dir} is for index {index}"


@dataclass(frozen=True)
class _Enrolled:
    """What the check-in needs of a registry device."""

    status: str
    device_index: int | None
    public_key: str
    name: str
    key_fingerprint: str


def bundles_dir_for_run() -> str:
    """The simulated enrollment's bundles: `devices/` here (absolute), if it exists."""
    path = Path("devices")
    return str(path.resolve()) if path.is_dir() else ""
