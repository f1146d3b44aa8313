"""Signed check-in: the device half (`fl_client.node.sign_challenge`) against the
server half (`fl_server.registry.identity.CheckinGate`), with real enrollment keys and a
real registry (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from flwr.app import Context, RecordDict

from fl_client.node import sign_challenge
from fl_server.enrollment import INFO_FILE, BundleOptions, DeviceSpec, enroll
from fl_server.registry import db
from fl_server.registry.identity import CheckinGate
from fl_server.revocation import revoke
from privacy.wire.budget import LedgerReport
from privacy.wire.checkin import CheckinAnswer, checkin_statement


@pytest.fixture
def fleet(registry_url, tmp_path):
    db.upgrade(registry_url)
    enroll(registry_url, [DeviceSpec(f"cam-{i}") for i in range(3)],
           BundleOptions(bundles_dir=tmp_path / "devices"))
    return registry_url, tmp_path / "devices"


def node(node_id: int, partition: int, **node_config) -> Context:
    return Context(run_id=7, node_id=node_id, node_config={"partition-id": partition,
                                                           **node_config},
                   state=RecordDict(), run_config={})


def answer(gate: CheckinGate, context: Context, index: int, **fields) -> CheckinAnswer:
    """The answer as the device's check-in handler builds it, through the wire format."""
    sent = sign_challenge(gate.challenge(), context,
                          CheckinAnswer(device=index, in_fleet=True, **fields))
    assert sent.signed
    return CheckinAnswer.from_record(sent.to_record())


def test_signed_answers_of_eligible_devices_are_admitted(fleet) -> None:
    url, bundles = fleet
    gate = CheckinGate(url, "run-a", frozenset({0, 1, 2}), str(bundles))
    answers = {100 + i: answer(gate, node(100 + i, i), i) for i in range(3)}
    assert gate.admit(answers) == {100: 0, 101: 1, 102: 2} and gate.refused == {}
    # Independent check of what was signed: the registry's public key verifies the
    # statement over (nonce, run id, node id) that the server built.
    info = json.loads((bundles / "cam-1" / INFO_FILE).read_text())
    load_ssh_public_key(info["public_key"].encode()).verify(
        bytes.fromhex(answers[101].signature),
        checkin_statement(gate.nonce, "run-a", 101, answers[101]), ec.ECDSA(hashes.SHA384()))
    assert answers[101].device_id == info["device_id"]


def test_forged_relayed_stale_revoked_and_unsigned_answers_are_refused(fleet) -> None:
    url, bundles = fleet
    gate = CheckinGate(url, "run-a", frozenset({0, 1}), str(bundles))
    good = answer(gate, node(200, 0), 0)
    relayed = answer(gate, node(201, 1), 1)  # signed for node 201, arrives from node 299
    stale_gate = CheckinGate(url, "run-a", frozenset({0, 1}), str(bundles))
    stale = answer(stale_gate, node(202, 1), 1)  # another round's nonce
    other_index = answer(gate, node(203, 2), 2)  # not among the run's devices
    unsigned = CheckinAnswer(device=1, in_fleet=True)
    liar = answer(gate, node(205, 0), 0)
    liar = dataclasses.replace(liar, device=1)  # cam-0's key, claiming cam-1's data index
    admitted = gate.admit({200: good, 299: relayed, 202: stale, 203: other_index,
                           204: unsigned, 205: liar})
    assert admitted == {200: 0}
    assert sorted(gate.refused) == [202, 203, 204, 205, 299]
    assert "does not verify for node 299" in gate.refused[299]
    assert "does not verify" in gate.refused[202]
    assert "not among the run's devices" in gate.refused[203]
    assert "no signed answer" in gate.refused[204]
    assert "enrolled for index 0, not 1" in gate.refused[205]
    revoke(url, "cam-0", "lost")
    gate2 = CheckinGate(url, "run-a", frozenset({0, 1}), str(bundles))
    assert gate2.admit({200: answer(gate2, node(200, 0), 0)}) == {}
    assert "revoked" in gate2.refused[200]


def test_a_real_supernode_signs_with_the_key_from_its_node_config(fleet) -> None:
    """Deployment: `fedmsr device start` passes device-id and device-key in --node-config."""
    url, bundles = fleet
    info = json.loads((bundles / "cam-2" / INFO_FILE).read_text())
    context = node(300, 0, **{"device-index": 2, "device-id": info["device_id"],
                              "device-key": str(bundles / "cam-2" / "device.key")})
    context.node_config.pop("partition-id")
    gate = CheckinGate(url, "run-b", frozenset({2}))  # no simulated bundles directory
    assert gate.admit({300: answer(gate, context, 2)}) == {300: 2}
    no_key = node(301, 2)
    unsigned = CheckinAnswer(device=2, in_fleet=True)
    assert sign_challenge(gate.challenge(), no_key, unsigned) == unsigned


@pytest.mark.parametrize("tamper", [
    {"num_clips": 1}, {"profile": "bodycam"}, {"declined": None},
    {"ledger": LedgerReport(epsilon=0.0, delta=1e-5, events=0)}, {"device": 1},
])
def test_a_relayed_answer_with_any_field_changed_fails_verification(fleet, tamper) -> None:
    """A relay (or the network) lowers the device's ledger total, drops its refusal, its
    clip count or profile: the signature covers the whole answer (fedmsr-checkin/v2)."""
    url, bundles = fleet
    gate = CheckinGate(url, "run-a", frozenset({0, 1}), str(bundles))
    honest = answer(gate, node(500, 0), 0, num_clips=12, profile="glasses",
                    ledger=LedgerReport(epsilon=3.25, delta=1e-5, events=4),
                    declined="own cap reached")
    assert gate.admit({500: honest}) == {500: 0}
    changed = CheckinAnswer.from_record(dataclasses.replace(honest, **tamper).to_record())
    gate.refused.clear()
    assert gate.admit({500: changed}) == {}
    assert "does not verify for node 500" in gate.refused[500] \
        or "enrolled for index 0, not 1" in gate.refused[500]


# -- the bundles a run signs with: those the registry enrolled ------------------------------


def test_a_run_signs_with_the_bundles_the_registry_enrolled(registry_url, tmp_path,
                                                            monkeypatch) -> None:
    """Enrolled with --bundles-dir X while ./devices holds another fleet's bundles: the run
    (no option about bundles) uses X, and every device's signature verifies."""
    from fl_server.config import RunConfig
    from fl_server.registry.fleet import fleet_for_new_run
    from fl_server.registry.identity import BUNDLES_EXTRA

    monkeypatch.chdir(tmp_path)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    db.upgrade(other)  # another fleet's bundles, where the old lookup looked
    enroll(other, [DeviceSpec(f"old-{i}") for i in range(3)], BundleOptions(bundles_dir=tmp_path
                                                                            / "devices"))
    db.upgrade(registry_url)
    enroll(registry_url, [DeviceSpec(f"cam-{i}") for i in range(3)],
           BundleOptions(bundles_dir=tmp_path / "X"))
    monkeypatch.setenv(db.ENV_VAR, registry_url)
    cfg = fleet_for_new_run(RunConfig(devices=3, run_id="run-x").validate())
    assert cfg.extra[BUNDLES_EXTRA] == str((tmp_path / "X").resolve())
    gate = CheckinGate.for_config(cfg)
    assert gate is not None
    answers = {300 + i: answer(gate, node(300 + i, i), i) for i in range(3)}
    assert gate.admit(answers) == {300: 0, 301: 1, 302: 2} and gate.refused == {}


def test_a_key_mismatch_names_the_bundle_and_key_the_node_used(registry_url, tmp_path) -> None:
    other = f"sqlite:///{tmp_path / 'other.db'}"
    db.upgrade(other)
    enroll(other, [DeviceSpec("old-0")], BundleOptions(bundles_dir=tmp_path / "wrong"))
    db.upgrade(registry_url)
    enroll(registry_url, [DeviceSpec("cam-0")], BundleOptions(bundles_dir=tmp_path / "X"))
    gate = CheckinGate(registry_url, "run-a", frozenset({0}), str(tmp_path / "wrong"))
    signed = sign_challenge(gate.challenge(), node(400, 0), CheckinAnswer(device=0,
                                                                          in_fleet=True))
    mine = json.loads((tmp_path / "X" / "cam-0" / INFO_FILE).read_text())
    theirs = json.loads((tmp_path / "wrong" / "old-0" / INFO_FILE).read_text())
    # The other fleet's bundle claims the registry's device id (both databases start at 1).
    assert gate.admit({400: CheckinAnswer(device=0, in_fleet=True, device_id=mine["device_id"],
                                          signature=signed.signature)}) == {}
    problem = gate.refused[400]
    assert f"registry's key {mine['key_fingerprint']}" in problem
    assert str(tmp_path / "wrong" / "old-0" / "device.key") in problem
    assert f"(key {theirs['key_fingerprint']})" in problem


def test_devices_enrolled_into_two_bundle_dirs_cannot_share_a_run(registry_url, tmp_path,
                                                                  monkeypatch) -> None:
    from fl_server.config import RunConfig
    from fl_server.registry.db import RegistryError
    from fl_server.registry.fleet import fleet_for_new_run

    db.upgrade(registry_url)
    enroll(registry_url, [DeviceSpec("a-0")], BundleOptions(bundles_dir=tmp_path / "A"))
    enroll(registry_url, [DeviceSpec("b-0")], BundleOptions(bundles_dir=tmp_path / "B"))
    monkeypatch.setenv(db.ENV_VAR, registry_url)
    with pytest.raises(RegistryError, match="several bundle directories"):
        fleet_for_new_run(RunConfig(devices=2, run_id="run-ab").validate())
