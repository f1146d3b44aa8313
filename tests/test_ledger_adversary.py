"""Ledgers an untrusted party cannot bend: each test plays the attacker and shows it gets
nothing. Epsilon is checked against dp-accounting's PLD accountant, computed here
independently of the ledger code under test."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting as dpa
import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from fl_client.device_ledger import FILE_NAME, DeviceLedger, sealed
from fl_client.ledger_reservations import checkin_verdict
from fl_client.local_round import run_local_round
from privacy.accounting import DpEvent, EventKind
from privacy.encoder import EncoderConfig, build_model, state_to_numpy
from privacy.synthetic import FleetSpec
from privacy.wire.budget import BudgetPlan, planned_local_event
from privacy.wire.instructions import Instructions
from privacy.wire.train import TrainConfig

DELTA = 1e-5


def reference_epsilon(events: list[DpEvent], delta: float = DELTA) -> float:
    """dp-accounting's PLD epsilon of a composition, built from its own event classes."""
    acc = dpa.pld.PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(dpa.ComposedDpEvent([
        dpa.SelfComposedDpEvent(
            dpa.GaussianDpEvent(e.noise_multiplier) if e.sample_rate == 1.0 else
            dpa.PoissonSampledDpEvent(e.sample_rate, dpa.GaussianDpEvent(e.noise_multiplier)),
            e.steps) for e in events]))
    return float(acc.get_epsilon(delta))


# == The device's own ledger against a server that re-sends a round =========================

FLEET = FleetSpec(seed=3, num_devices=2, days=2, clips_per_day=4, frames=8, image_size=32,
                  num_bystanders=4)


def _instructions(server_round: int = 1) -> Instructions:
    return Instructions(server_round=server_round, fleet=FLEET, model=EncoderConfig(),
                        train=TrainConfig(dp_sgd=True, batch_size=4, noise_multiplier=1.1,
                                          clip_norm=1.0), train_days=1)


def _plan(tmp_path: Path, central: bool = False) -> BudgetPlan:
    return BudgetPlan(run_id="run-x", delta=DELTA,
                      central_sample_rate=0.5 if central else 0.0,
                      central_noise_multiplier=1.3 if central else 0.0,
                      sim_state_root=str(tmp_path / "state"), sim_default_cap=50.0)


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(),
                   run_config={})


def _train_message(plan: BudgetPlan, server_round: int = 1) -> ConfigRecord:
    return ConfigRecord({**_instructions(server_round).to_record(), **plan.to_flat()})


def _global_arrays() -> dict[str, np.ndarray]:
    return state_to_numpy(build_model(EncoderConfig(), seed=0))


def _nudged(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {k: v.copy() for k, v in arrays.items()}
    name = next(k for k, v in out.items() if v.dtype.kind == "f" and v.size)
    out[name].flat[0] += 1e-6
    return out


def _own_ledger(tmp_path: Path) -> DeviceLedger:
    return DeviceLedger.open(tmp_path / "state" / "0")


def test_a_resent_round_on_nudged_weights_is_charged_as_a_second_release(tmp_path) -> None:
    """The server re-sends round 1 with one weight nudged by 1e-6: the device trains again
    with independent noise (its seed is an HMAC over the inputs), so its own ledger must
    hold two releases, and its epsilon is dp-accounting's over both."""
    plan, ctx, arrays = _plan(tmp_path), _context(), _global_arrays()
    first = run_local_round(_train_message(plan), arrays, ctx)
    second = run_local_round(_train_message(plan), _nudged(arrays), ctx)
    assert first.dp_event is not None and second.dp_event is not None
    assert not all(np.array_equal(first.arrays[k], second.arrays[k]) for k in first.arrays)
    ledger = _own_ledger(tmp_path)
    assert len(ledger.releases) == 2
    digests = [r.inputs for r in ledger.releases]
    assert None not in digests and len(set(digests)) == 2
    expected = reference_epsilon([first.dp_event, second.dp_event])
    assert ledger.report().events == 2
    assert ledger.report().epsilon == pytest.approx(expected, rel=2e-2)
    assert ledger.report().epsilon > reference_epsilon([first.dp_event]) * 1.05


def test_an_identical_resend_is_the_crash_redo_and_is_free(tmp_path) -> None:
    """The server's redo after a crash sends the same inputs: the same seed, the same
    update, and no second release on the device's ledger."""
    plan, ctx, arrays = _plan(tmp_path), _context(), _global_arrays()
    first = run_local_round(_train_message(plan), arrays, ctx)
    again = run_local_round(_train_message(plan), {k: v.copy() for k, v in arrays.items()}, ctx)
    assert all(np.array_equal(first.arrays[k], again.arrays[k]) for k in first.arrays)
    ledger = _own_ledger(tmp_path)
    assert first.dp_event is not None and ledger.report().events == 1
    assert ledger.report().epsilon == pytest.approx(reference_epsilon([first.dp_event]),
                                                    rel=2e-2)


def test_checkin_reserves_then_each_distinct_training_is_charged(tmp_path) -> None:
    """Central + local DP. Check-in charges the round's central event before any inputs are
    known; the first training binds it (free) and adds its local event; a check-in again
    for the same round adds nothing; a training on other inputs charges both again; the
    device refuses once that would pass its own cap."""
    plan, ctx = _plan(tmp_path, central=True), _context()
    instructions, n = _instructions(), 4
    local = planned_local_event(instructions.train, n)
    central = plan.central_event()
    assert local is not None and central is not None
    assert checkin_verdict(plan, ctx, 0, None, instructions, n).declined is None
    ledger = _own_ledger(tmp_path)
    assert [(r.event.kind, r.inputs) for r in ledger.releases] == [
        (EventKind.CENTRAL_DP_FEDAVG, None)]
    from fl_client.ledger_reservations import reserve_for_training
    d1, d2 = b"\x01" * 32, b"\x02" * 32
    reserve_for_training(plan, ctx, 0, None, instructions, n, d1)
    reserve_for_training(plan, ctx, 0, None, instructions, n, d1)  # redo: free
    assert checkin_verdict(plan, ctx, 0, None, instructions, n).declined is None
    assert len(_own_ledger(tmp_path).releases) == 2
    reserve_for_training(plan, ctx, 0, None, instructions, n, d2)  # re-sent, other inputs
    ledger = _own_ledger(tmp_path)
    assert sorted((r.event.kind.value, r.inputs) for r in ledger.releases) == sorted([
        ("central-dp-fedavg", d1.hex()), ("local-dp-sgd", d1.hex()),
        ("central-dp-fedavg", d2.hex()), ("local-dp-sgd", d2.hex())])
    assert ledger.report().epsilon == pytest.approx(
        reference_epsilon([central, local, central, local]), rel=2e-2)
    # A cap just above the spend: the next re-send is refused, not trained.
    tight = _plan(tmp_path, central=True)
    path = tmp_path / "state" / "0" / FILE_NAME
    body = json.loads(path.read_text())
    body.pop("sha256")
    body["cap_epsilon"] = ledger.epsilon() * 1.01
    path.write_bytes(sealed(body))
    from fl_client.device_ledger import DeviceBudgetExceeded
    with pytest.raises(DeviceBudgetExceeded, match="past its own cap"):
        reserve_for_training(tight, ctx, 0, None, instructions, n, b"\x03" * 32)
    assert len(_own_ledger(tmp_path).releases) == 4


def test_a_version_1_ledger_still_opens_and_never_undercounts(tmp_path) -> None:
    """A ledger written before digests were stored opens; its releases match no digest,
    so a round it recorded and trained again is charged again (over-count, not under)."""
    event = DpEvent(0.25, 1.1, 4, EventKind.LOCAL_DP_SGD)
    state = tmp_path / "dev"
    state.mkdir()
    body = {"format": "fedmsr-device-ledger", "version": 1, "cap_epsilon": 50.0,
            "delta": DELTA, "written_at": "2026-01-01T00:00:00+00:00",
            "releases": [{"run": "r", "round": 1, **event.to_dict()}]}
    (state / FILE_NAME).write_bytes(sealed(body))
    ledger = DeviceLedger.open(state)
    assert ledger.report().events == 1
    ledger.reserve("r", 1, [event], b"\x05" * 32)
    assert ledger.report().events == 2
    assert json.loads((state / FILE_NAME).read_text())["version"] == 2
    assert DeviceLedger.open(state).report().events == 2
    # The checksum still guards the file; an unknown version is named.
    raw = json.loads((state / FILE_NAME).read_text())
    raw["releases"][0]["inputs"] = "aa" * 32
    (state / FILE_NAME).write_text(json.dumps(raw))
    with pytest.raises(Exception, match="checksum mismatch"):
        DeviceLedger.open(state)
    body["version"] = 3
    (state / FILE_NAME).write_bytes(sealed(body))
    with pytest.raises(Exception, match="version 3, this fedmsr reads 1 or 2"):
        DeviceLedger.open(state)
