"""Ledgers an untrusted party cannot bend: each test plays the attacker and shows it gets
nothing. Epsilon is checked against dp-accounting's PLD accountant, computed here
independently of the ledger code under test."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dp_accounting as dpa
import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DBAPIError

from fl_client.device_ledger import FILE_NAME, DeviceLedger, sealed
from fl_client.ledger_reservations import checkin_verdict
from fl_client.local_round import run_local_round
from fl_server import privacy_ledger as ledger
from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
from fl_server.registry import db
from fl_server.registry.models import Device
from fl_server.registry.scratch import scratch_registry
from privacy.accounting import DpEvent, EventKind
from privacy.encoder import EncoderConfig, build_model, state_to_numpy
from privacy.synthetic import FleetSpec
from privacy.wire.budget import BudgetPlan, planned_local_event
from privacy.wire.instructions import Instructions
from privacy.wire.train import TrainConfig
from tests.conftest import POSTGRES_ADMIN_URL
from tests.ledger_recount import mismatch_details, sql_execute, sql_rows
from tests.helpers import EXIT_WAIT_S
from tests.reference_memo import reference

DELTA = 1e-5


@reference
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


# == The server's ledger against someone with write access to the database ================
# (registry_url: SQLite and PostgreSQL, tests/conftest.py)

LOCAL = DpEvent(0.05, 1.0, 20)  # one round of DP-SGD


def _device(url: str, tmp_path: Path, cap: float | None) -> int:
    db.upgrade(url)
    enroll(url, [DeviceSpec("cam-0", epsilon_cap=cap, delta_cap=DELTA)],
           BundleOptions(bundles_dir=tmp_path / "b"))
    with db.session_scope(url) as s:
        return int(s.query(Device.id).filter(Device.name == "cam-0").scalar())


def _cap_fitting(rounds: int) -> float:
    """A cap that `rounds` releases fit in and one more does not (dp-accounting's PLD)."""
    return (reference_epsilon([LOCAL] * rounds) + reference_epsilon([LOCAL] * (rounds + 1))) / 2


def _reserve(url: str, device: int, server_round: int) -> ledger.Reservation:
    return ledger.reserve(url, "r1", server_round, [ledger.Release(device, LOCAL)], DELTA, None)


def _vector(url: str) -> np.ndarray:
    (blob,) = sql_rows(url, "SELECT rdp FROM device_budgets")[0]
    return np.frombuffer(bytes(blob), dtype="<f8").copy()


def _drop_triggers(url: str) -> None:
    """What the database's owner can do: switch off every ledger rule."""
    engine = db.get_engine(url)
    with engine.begin() as c:
        if engine.dialect.name == "sqlite":
            for (name,) in c.execute(text("SELECT name FROM sqlite_master WHERE type = "
                                          "'trigger'")).all():
                c.execute(text(f'DROP TRIGGER "{name}"'))
        else:
            for table in ("privacy_events", "device_budgets"):
                c.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))


def _over_cap(url: str, device: int, cap: float) -> None:
    """The device's charged epsilon, by dp-accounting over the rows, within its cap; and the
    rows are exactly what was charged (nothing lost)."""
    events = [DpEvent(q, s, n) for q, s, n in sql_rows(
        url, f"SELECT sample_rate, noise_multiplier, steps FROM privacy_events "
             f"WHERE device_id = {device}")]
    assert reference_epsilon(events) <= cap


@pytest.mark.parametrize("tamper", [
    "zero the vector", "lower one order", "zero the vector with a fake count",
    "delete an event row", "raise a noise multiplier"])
def test_the_database_refuses_every_tamper_with_the_spend(registry_url, tmp_path,
                                                          tamper) -> None:
    """The vector changes only together with new event rows; rows are append-only."""
    device = _device(registry_url, tmp_path, _cap_fitting(3))
    for r in (1, 2, 3):
        assert _reserve(registry_url, device, r).reserved == (device,)
    vector, before = _vector(registry_url), sql_rows(registry_url, "SELECT * FROM device_budgets")
    lowered = vector.copy()
    lowered[10] = 0.0
    statement, params = {
        "zero the vector": ("UPDATE device_budgets SET rdp = :v",
                            {"v": np.zeros_like(vector).tobytes()}),
        "lower one order": ("UPDATE device_budgets SET rdp = :v", {"v": lowered.tobytes()}),
        "zero the vector with a fake count": (
            "UPDATE device_budgets SET rdp = :v, events = events + 1",
            {"v": np.zeros_like(vector).tobytes()}),
        "delete an event row": ("DELETE FROM privacy_events WHERE round_number = 1", {}),
        "raise a noise multiplier": ("UPDATE privacy_events SET noise_multiplier = 50", {}),
    }[tamper]
    with pytest.raises(DBAPIError, match="RDP vector changes only|must equal|append-only"):
        sql_execute(registry_url, statement, **params)
    assert sql_rows(registry_url, "SELECT * FROM device_budgets") == before
    assert _reserve(registry_url, device, 4).refused[0].device_id == device
    _over_cap(registry_url, device, _cap_fitting(3))


@pytest.mark.parametrize("tamper", ["zero the vector", "lower one order"])
def test_a_lowered_cache_is_not_trusted_the_rows_decide(registry_url, tmp_path,
                                                        tamper) -> None:
    """The owner drops the triggers and lowers the cached vector: the device looks eligible
    to the cheap pre-check, but the charge recomputes the spend from the rows and refuses
    past the cap, audits the mismatch, and charges nothing."""
    cap = _cap_fitting(3)
    device = _device(registry_url, tmp_path, cap)
    for r in (1, 2, 3):
        assert _reserve(registry_url, device, r).reserved == (device,)
    _drop_triggers(registry_url)
    vector = _vector(registry_url)
    forged = np.zeros_like(vector) if tamper == "zero the vector" else vector.copy()
    if tamper == "lower one order":
        forged[:] = vector * 0.5
    sql_execute(registry_url, "UPDATE device_budgets SET rdp = :v", v=forged.tobytes())
    assert ledger.eligible(registry_url, [device], LOCAL, DELTA, None)[0] == [device] or \
        tamper == "lower one order"  # the pre-check reads the cache: that is why it is not enough
    for r in (4, 5, 6):
        out = _reserve(registry_url, device, r)
        assert out.reserved == () and out.refused[0].device_id == device
    assert sql_rows(registry_url, "SELECT count(*) FROM privacy_events") == [(3,)]
    _over_cap(registry_url, device, cap)
    assert ledger.budget_state(registry_url, device, DELTA).epsilon == pytest.approx(
        reference_epsilon([LOCAL] * 3), rel=1e-2)
    actions = [a for (a,) in sql_rows(registry_url, "SELECT action FROM audit_log")]
    assert "budget.ledger-mismatch" in actions


def _with_forged_cache(url: str, tmp_path: Path,
                       forge: Callable[[np.ndarray], np.ndarray], wipe_rows: bool = False
                       ) -> tuple[ledger.Reservation, list[str]]:
    """Two rounds charged (no cap), the cached vector rewritten behind the database's back by
    `forge(true vector)` (and, with `wipe_rows`, every event row deleted and the count set to
    0), then a third round: its reservation and the audited decisions."""
    device = _device(url, tmp_path, None)
    for r in (1, 2):
        assert _reserve(url, device, r).reserved == (device,)
    truth = _vector(url)
    _drop_triggers(url)
    sql_execute(url, "UPDATE device_budgets SET rdp = :v", v=forge(truth.copy()).tobytes())
    if wipe_rows:
        sql_execute(url, "DELETE FROM privacy_events")
        sql_execute(url, "UPDATE device_budgets SET events = 0")
    out = _reserve(url, device, 3)
    return out, [d["decision"] for d in mismatch_details(url)]


def _zero_one_order(v: np.ndarray) -> np.ndarray:
    v[10] = 0.0
    return v


@pytest.mark.parametrize("forge", [np.zeros_like, _zero_one_order],
                         ids=["zero the vector", "zero one order"])
def test_a_lowered_cache_below_the_cap_is_charged_from_the_rows_and_repaired(
        registry_url, tmp_path, forge) -> None:
    """Room left under the cap: the charge goes through on the rows' figure (audited), and
    the cache is written back equal to the rows (not the forged vector + one round)."""
    out, decisions = _with_forged_cache(registry_url, tmp_path, forge)
    assert out.reserved and not out.refused and decisions == ["charged from the rows"]
    from privacy.accounting import rdp_vector
    np.testing.assert_allclose(_vector(registry_url), rdp_vector([LOCAL] * 3), rtol=1e-9)


def test_a_deleted_cache_row_is_rebuilt_from_the_rows(registry_url, tmp_path) -> None:
    """The owner deletes the device's cached vector: the rows are the truth, so the charge
    goes through on them (audited) and the cache is rebuilt from them, counting every row."""
    device = _device(registry_url, tmp_path, None)
    for r in (1, 2):
        assert _reserve(registry_url, device, r).reserved == (device,)
    _drop_triggers(registry_url)
    sql_execute(registry_url, "DELETE FROM device_budgets")
    out = _reserve(registry_url, device, 3)
    assert out.reserved == (device,) and not out.refused
    (detail,) = mismatch_details(registry_url)
    assert (detail["decision"], detail["cached_events"], detail["rows"],
            detail["cached_epsilon"]) == ("charged from the rows", 0, 2, 0.0)
    from privacy.accounting import rdp_vector
    np.testing.assert_allclose(_vector(registry_url), rdp_vector([LOCAL] * 3), rtol=1e-9)
    assert sql_rows(registry_url, "SELECT events FROM device_budgets") == [(3,)]


def test_the_reservation_lock_holds_writers_off_but_not_references(registry_url,
                                                                   tmp_path) -> None:
    """What a reservation locks, from its first read to its commit. On SQLite the database
    for writing (BEGIN IMMEDIATE): no other writer slips in between the spend it reads and
    the charge it writes. On PostgreSQL the device rows, FOR NO KEY UPDATE: a second
    reservation waits for them, an insert that only references the device (an audit or a
    participation row) does not."""
    device = _device(registry_url, tmp_path, None)
    audit_row = ("INSERT INTO audit_log (at, actor, action, device_id, detail) "
                 "VALUES ('2026-01-01 00:00:00+00:00', 'test', 'test.reference', :d, '{}')")
    with db.session_scope(registry_url) as session:
        ledger._lock_devices(session, [device])
        if registry_url.startswith("sqlite"):
            other = sqlite3.connect(registry_url.removeprefix("sqlite:///"), timeout=0.2)
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                other.execute(audit_row.replace(":d", "?"), (device,))
            other.close()
            return
        engine = create_engine(registry_url)  # a connection of its own
        try:
            with engine.connect() as c:
                c.execute(text("SET lock_timeout = '20s'"))  # a hang bound, not a speed
                c.execute(text(audit_row), {"d": device})    # through at once
                c.commit()
                c.execute(text("SET lock_timeout = '200ms'"))
                with pytest.raises(DBAPIError, match="lock timeout"):
                    c.execute(text("SELECT id FROM devices WHERE id = :d FOR NO KEY UPDATE"),
                              {"d": device})
        finally:
            engine.dispose()


def _small(v: np.ndarray) -> np.ndarray:
    """Orders where the true vector is below 1 (the tolerance there is VECTOR_RTOL itself)."""
    small = np.flatnonzero((v > 0) & (v < 1))
    assert small.size and np.any(np.isfinite(v) & (v > 1))  # both regimes are exercised
    return small


def _up_by(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    """Raise the cache at the small orders by `factor` x the tolerance."""
    def forge(v: np.ndarray) -> np.ndarray:
        v[_small(v)] += factor * ledger.VECTOR_RTOL
        return v
    return forge


def _at_the_tolerance(v: np.ndarray) -> np.ndarray:
    """With the rows wiped (all zero), a cache of exactly the tolerance: `cache - rows` is
    the tolerance to the last bit, as it can be only next to zero."""
    return np.full_like(v, ledger.VECTOR_RTOL)


def _at_the_tolerance_and_below_zero_once(v: np.ndarray) -> np.ndarray:
    v = _at_the_tolerance(v)
    v[10] = -5.0
    return v


@pytest.mark.parametrize("forge, wipe, charged, decisions", [
    (lambda v: v * (1 + ledger.VECTOR_RTOL / 2), False, True, []),
    (_up_by(1.5), False, False, ["refused"]),
    (_at_the_tolerance, True, True, []),
    (_at_the_tolerance_and_below_zero_once, True, True, ["charged from the rows"]),
], ids=["within rounding", "above it", "at it", "at it, one order lower"])
def test_the_cache_check_forgives_rounding_and_nothing_more(registry_url, tmp_path, forge,
                                                            wipe, charged, decisions) -> None:
    """The rows are recomputed in another summation order than the cache was built in, so
    the two may differ in the last bits: up to VECTOR_RTOL x max(1, |rows|), inclusive, the
    cache is the same (no audit). A cache above the rows by more says the rows lost
    something: refused. A cache lowered somewhere is not trusted: the rows are charged."""
    out, audited = _with_forged_cache(registry_url, tmp_path, forge, wipe_rows=wipe)
    assert (bool(out.reserved), bool(out.refused)) == (charged, not charged)
    assert audited == decisions


@pytest.mark.parametrize("tamper", ["delete an event row", "raise a noise multiplier"])
def test_rows_lowered_behind_the_databases_back_refuse_the_device(registry_url, tmp_path,
                                                                  tamper) -> None:
    """The owner drops the triggers and rewrites the rows (the cache still holds the true
    spend): rows below the cache are evidence of tampering, the device is refused with the
    reason and audited, even though the rewritten rows would fit."""
    cap = _cap_fitting(3)
    device = _device(registry_url, tmp_path, cap)
    for r in (1, 2, 3):
        _reserve(registry_url, device, r)
    _drop_triggers(registry_url)
    sql_execute(registry_url, "DELETE FROM privacy_events WHERE round_number = 1"
             if tamper == "delete an event row" else
             "UPDATE privacy_events SET noise_multiplier = 50")
    out = _reserve(registry_url, device, 4)
    assert out.reserved == ()
    assert "rows were deleted or rewritten" in out.refused[0].reason
    assert sql_rows(registry_url, "SELECT count(*) FROM privacy_events WHERE round_number = 4"
                 ) == [(0,)]
    actions = [a for (a,) in sql_rows(registry_url, "SELECT action FROM audit_log")]
    assert "budget.ledger-mismatch" in actions


# == Infinite caps: refused at every entry point ============================================

# (NaN is not here: SQLite stores it as NULL; enrollment refuses it before any SQL.)
@pytest.mark.parametrize("value", [float("inf"), 1e309])
def test_an_infinite_cap_is_refused_by_the_database(registry_url, tmp_path, value) -> None:
    device = _device(registry_url, tmp_path, 5.0)
    with pytest.raises(DBAPIError, match="epsilon_cap"):
        sql_execute(registry_url, "UPDATE devices SET epsilon_cap = :c WHERE id = :i",
                 c=value, i=device)
    assert sql_rows(registry_url, "SELECT epsilon_cap FROM devices") == [(5.0,)]


def test_a_database_holding_an_infinite_cap_is_not_upgraded_silently(registry_url,
                                                                     tmp_path) -> None:
    from alembic import command
    engine = db.get_engine(registry_url)
    with engine.begin() as c:
        command.upgrade(db.alembic_config(c), "0003_representations")
    sql_execute(registry_url, "INSERT INTO devices (name, profile, public_key, key_fingerprint, "
             "status, consent_training, consent_evaluation, created_at, epsilon_cap, "
             "data_source) VALUES ('cam-0', 'glasses', 'k', 'f', 'enrolled', true, true, "
             ":t, :c, 'synthetic')", t=dt.datetime.now(dt.UTC), c=float("inf"))
    with pytest.raises(Exception, match="cam-0 have an infinite epsilon cap"):
        db.upgrade(registry_url)
    assert db.current_revision(registry_url) == "0003_representations"


@pytest.mark.parametrize("value", ["inf", "1e309", "-inf", "nan"])
def test_an_infinite_cap_in_a_manifest_is_one_line_exit_2_nothing_written(
        registry_url, tmp_path, monkeypatch, capsys, value) -> None:
    from fl_server.cli import main
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDMSR_DB", registry_url)
    assert main(["db", "upgrade"]) == 0
    (tmp_path / "m.csv").write_text(f"name,epsilon_cap\nok-0,5\nbad-1,{value}\n")
    capsys.readouterr()
    assert main(["fleet", "enroll", "--manifest", "m.csv"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "epsilon_cap: must be a finite number" in err, err
    assert sql_rows(registry_url, "SELECT count(*) FROM devices") == [(0,)]
    assert not (tmp_path / "devices").exists() or not any((tmp_path / "devices").iterdir())


@pytest.mark.parametrize("value", [float("inf"), 1e309, float("nan")])
def test_an_infinite_run_cap_is_a_config_error(value) -> None:
    from fl_server.config import ConfigError, RunConfig
    with pytest.raises(ConfigError, match="epsilon_cap.*finite"):
        RunConfig(epsilon_cap=value).validate()


def test_two_reservations_lock_devices_in_id_order_whatever_their_plans(tmp_path) -> None:
    """PostgreSQL: a reservation locks its devices in id order, so two reservations of the
    same devices never deadlock, even when their plans read the rows in different orders
    (an index scan reads by id; a sequential scan reads by where the rows lie on disk, and
    an updated row moves). Choreography: a third transaction holds device 1; reservation A
    (index scan) queues for it holding nothing; reservation B (sequential scan, which meets
    device 2 first) queues next. Locking in scan order, B would take device 2 first and the
    two would deadlock once device 1 is released; locking in id order, both simply wait."""
    with scratch_registry("postgresql", POSTGRES_ADMIN_URL, tmp_path,
                          prefix="fedmsr_test") as url:
        db.upgrade(url)
        enroll(url, [DeviceSpec(f"cam-{i}") for i in range(2)],
               BundleOptions(bundles_dir=tmp_path / "b"))
        with db.session_scope(url) as s:
            first, second = sorted(s.scalars(select(Device.id)))
        engine = create_engine(url)
        try:
            with engine.connect() as c:  # the row of device 1 moves past device 2 on disk
                c.execute(text("UPDATE devices SET name = name WHERE id = :d"), {"d": first})
                c.commit()
                for off in ("indexscan", "bitmapscan"):
                    c.execute(text(f"SET enable_{off} = off"))
                on_disk = c.execute(text("SELECT id FROM devices")).scalars().all()
                assert on_disk == [second, first]
            holder = engine.connect()
            holder.execute(text("SELECT id FROM devices WHERE id = :d FOR UPDATE"),
                           {"d": first})
            errors: list[BaseException] = []
            pids: dict[str, int] = {}

            def reserve(name: str, plans_off: tuple[str, str]) -> None:
                try:
                    with db.session_scope(url) as session:
                        for off in plans_off:
                            session.execute(text(f"SET enable_{off} = off"))
                        pids[name] = session.execute(text("SELECT pg_backend_pid()")).scalar()
                        ledger._lock_devices(session, [second, first])
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            def waiting(name: str) -> bool:
                with engine.connect() as c:
                    return bool(c.execute(text("SELECT cardinality(pg_blocking_pids(:p))"),
                                          {"p": pids.get(name, 0)}).scalar())

            threads = {}
            for name, plans_off in [("A", ("seqscan", "bitmapscan")),
                                    ("B", ("indexscan", "bitmapscan"))]:
                threads[name] = threading.Thread(target=reserve, args=(name, plans_off))
                threads[name].start()
                deadline = time.monotonic() + EXIT_WAIT_S
                while not waiting(name):
                    assert time.monotonic() < deadline and threads[name].is_alive(), errors
                    time.sleep(0.05)
            holder.rollback()
            holder.close()
            for t in threads.values():
                t.join(EXIT_WAIT_S)
            assert not errors, errors
        finally:
            engine.dispose()
