"""The server's privacy ledger at its edges: the operator-facing messages of refused calls,
what each query returns (rows, states in id order, fleet figures of an empty or mixed fleet,
per-kind spend, a device's own delta cap), committing one kind of release only, and how a
device's check-in report is judged against the server's figure at the tolerance's exact
boundaries, with its audit entries written once per new disagreement. Epsilon figures are
recounted with dp-accounting's PLD accountant called directly."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pytest

from fl_server import privacy_ledger as ledger
from fl_server.registry import audit, db
from privacy.accounting import DpEvent, EventKind, epsilon_from_rdp, pld_epsilon, rdp_vector
from privacy.wire.budget import LedgerReport
from tests.test_privacy_ledger import CENTRAL, DELTA, LOCAL, fleet, independent_epsilon
from tests.ledger_recount import mismatch_details, sql_execute, sql_rows

NO_DEVICE_999 = "^device: no registry device with id 999$"


def _drop_sqlite_triggers(url: str) -> None:
    """What a SQLite registry's owner can do: switch off every ledger rule."""
    for (name,) in sql_rows(url, "SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        sql_execute(url, f'DROP TRIGGER "{name}"')


def _reserve(url: str, run_id: str, round_number: int, device: int,
             *events: DpEvent) -> None:
    got = ledger.reserve(url, run_id, round_number,
                         [ledger.Release(device, e) for e in events], DELTA, None)
    assert got.reserved == (device,)


def _recounted(got: float, events: list[DpEvent], delta: float = DELTA) -> bool:
    """The ledger's reported figure is never below the exact one, and close to it."""
    exact = independent_epsilon(events, delta)
    return exact <= got <= 1.02 * exact


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


# -- plain data ------------------------------------------------------------------------------

def test_a_ledger_event_as_json_names_every_field() -> None:
    at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    done = dt.datetime(2026, 1, 2, 3, 9, 0, tzinfo=dt.timezone.utc)
    reserved = ledger.LedgerEvent(id=7, device_id=3, run_id="r1", round_number=2,
                                  kind="local-dp-sgd", sample_rate=0.05, noise_multiplier=1.0,
                                  steps=20, status="reserved", reserved_at=at,
                                  committed_at=None)
    assert reserved.to_json_dict() == {
        "kind": "local-dp-sgd", "run": "r1", "round": 2, "sample_rate": 0.05,
        "noise_multiplier": 1.0, "steps": 20, "status": "reserved",
        "reserved_at": "2026-01-02T03:04:05+00:00", "committed_at": None}
    committed = ledger.LedgerEvent(id=8, device_id=3, run_id="r1", round_number=2,
                                   kind="central-dp-fedavg", sample_rate=0.2,
                                   noise_multiplier=1.5, steps=1, status="committed",
                                   reserved_at=at, committed_at=done)
    assert committed.to_json_dict() == {
        "kind": "central-dp-fedavg", "run": "r1", "round": 2, "sample_rate": 0.2,
        "noise_multiplier": 1.5, "steps": 1, "status": "committed",
        "reserved_at": "2026-01-02T03:04:05+00:00",
        "committed_at": "2026-01-02T03:09:00+00:00"}


# -- refused calls: the whole message --------------------------------------------------------

@pytest.mark.parametrize("planned", [[], [LOCAL, "local-dp-sgd"]])
def test_eligible_refuses_a_plan_that_is_not_dp_events(sqlite_url, tmp_path, planned) -> None:
    (a,) = fleet(sqlite_url, tmp_path, [8.0])
    with pytest.raises(ValueError, match="^planned must be a DpEvent or a non-empty sequence "
                                         "of DpEvents$"):
        ledger.eligible(sqlite_url, [a], planned, DELTA, None)


def test_eligible_checks_delta_and_the_default_cap_and_applies_the_default(
        sqlite_url, tmp_path) -> None:
    a, b = fleet(sqlite_url, tmp_path, [None, 50.0])
    with pytest.raises(ValueError, match=r"^delta must be in \(0, 1\), got 0\.0$"):
        ledger.eligible(sqlite_url, [a], LOCAL, 0.0, None)
    with pytest.raises(ValueError, match=r"^default_cap must be a finite number > 0 or None, "
                                         r"got -1\.0$"):
        ledger.eligible(sqlite_url, [a], LOCAL, DELTA, -1.0)
    # One release costs ~1.98: a device without its own cap is held to the run's default.
    ok, refused = ledger.eligible(sqlite_url, [a, b], LOCAL, DELTA, 1.0)
    assert ok == [b]
    assert [(r.device_id, r.epsilon_cap, r.epsilon_spent) for r in refused] == [(a, 1.0, 0.0)]
    assert ledger.eligible(sqlite_url, [a, b], LOCAL, DELTA, None) == ([a, b], [])


def test_eligible_takes_a_resumed_round_whole_and_checks_it(sqlite_url, tmp_path) -> None:
    (a,) = fleet(sqlite_url, tmp_path, [8.0])
    for half in ({"run_id": "r1"}, {"round_number": 1}):
        with pytest.raises(ValueError, match="^give both run_id and round_number, or neither$"):
            ledger.eligible(sqlite_url, [a], LOCAL, DELTA, None, **half)
    with pytest.raises(ValueError, match="^round_number must be an int >= 1, got 0$"):
        ledger.eligible(sqlite_url, [a], LOCAL, DELTA, None, run_id="r1", round_number=0)
    with pytest.raises(ValueError, match="^run_id must be a non-empty string of at most 64 "
                                         "characters, got ''$"):
        ledger.eligible(sqlite_url, [a], LOCAL, DELTA, None, run_id="", round_number=1)
    assert ledger.eligible(sqlite_url, [a], LOCAL, DELTA, None, run_id="r1",
                           round_number=1) == ([a], [])


def test_a_device_exactly_at_its_cap_is_within_it_without_the_history_check(
        sqlite_url, tmp_path, monkeypatch) -> None:
    """The cap is inclusive, and the (costly) PLD history check runs only for a device whose
    RDP bound is over its cap: at the cap exactly, it is not asked; a hair below, it is."""
    at_cap = float(ledger._epsilons(np.zeros((1, len(ledger.ORDERS))) + rdp_vector([LOCAL]),
                                    [DELTA])[0])
    assert at_cap == pytest.approx(float(epsilon_from_rdp(rdp_vector([LOCAL]), DELTA)))
    a, b = fleet(sqlite_url, tmp_path, [at_cap, float(np.nextafter(at_cap, 0.0))])
    asked: list[int] = []
    real = ledger._refusal_by_history

    def spy(session, device, planned, cap, delta):
        asked.append(device.id)
        return real(session, device, planned, cap, delta)

    monkeypatch.setattr(ledger, "_refusal_by_history", spy)
    assert ledger.eligible(sqlite_url, [a], LOCAL, DELTA, None) == ([a], [])
    assert asked == []
    # Below it the RDP bound is over; the tighter reported (PLD) figure still fits.
    assert ledger.eligible(sqlite_url, [b], LOCAL, DELTA, None) == ([b], [])
    assert asked == [b]


def test_a_device_whose_reported_figure_is_its_cap_exactly_is_within_it(
        sqlite_url, tmp_path) -> None:
    """Over by the RDP bound, so the reported (PLD) figure decides, inclusively."""
    reported = pld_epsilon([LOCAL], DELTA)
    assert reported < float(epsilon_from_rdp(rdp_vector([LOCAL]), DELTA))
    below = float(np.nextafter(reported, 0.0))
    a, b = fleet(sqlite_url, tmp_path, [reported, below])
    ok, refused = ledger.eligible(sqlite_url, [a, b], LOCAL, DELTA, None)
    assert ok == [a]
    assert [(r.device_id, r.epsilon_cap) for r in refused] == [(b, below)]


def test_budget_state_checks_delta_and_applies_it_to_a_device_without_its_own(
        sqlite_url, tmp_path) -> None:
    (a,) = fleet(sqlite_url, tmp_path, [None], delta_cap=None)
    with pytest.raises(ValueError, match=r"^delta must be in \(0, 1\), got 2\.0$"):
        ledger.budget_state(sqlite_url, a, 2.0)
    _reserve(sqlite_url, "r1", 1, a, LOCAL)
    state = ledger.budget_state(sqlite_url, a, 1e-6)
    assert (state.device_id, state.name, state.delta, state.rounds) == (a, "cam-0", 1e-6, 1)
    assert _recounted(state.epsilon, [LOCAL], 1e-6)


def test_audit_device_report_refuses_a_non_report_and_an_unknown_device(sqlite_url) -> None:
    db.upgrade(sqlite_url)
    with pytest.raises(ValueError, match="^report must be a LedgerReport, got dict$"):
        ledger.audit_device_report(sqlite_url, 1, {"epsilon": 1.0})  # type: ignore[arg-type]
    with pytest.raises(db.RegistryError, match=NO_DEVICE_999):
        ledger.audit_device_report(sqlite_url, 999, LedgerReport(1.0, DELTA, 1))


def test_ledger_event_count_of_an_empty_ledger_is_zero(sqlite_url) -> None:
    db.upgrade(sqlite_url)
    assert ledger.ledger_event_count(sqlite_url) == 0


# -- commit of one kind ----------------------------------------------------------------------

def test_commit_in_of_one_kind_commits_that_kind_only(sqlite_url, tmp_path) -> None:
    a, b = fleet(sqlite_url, tmp_path, [None, None])
    _reserve(sqlite_url, "r1", 1, a, LOCAL, CENTRAL)
    _reserve(sqlite_url, "r1", 1, b, LOCAL)
    with db.session_scope(sqlite_url) as s:
        ledger.commit_in(s, "r1", 1, [a], kind=EventKind.CENTRAL_DP_FEDAVG)
    assert [(e.kind, e.status) for e in ledger.device_events(sqlite_url, a)] == [
        ("local-dp-sgd", "reserved"), ("central-dp-fedavg", "committed")]
    with pytest.raises(db.RegistryError, match=(
            f"^privacy ledger: device {b} has no reserved central-dp-fedavg release in run r1 "
            "round 1; only a reserved release can be committed$")), \
            db.session_scope(sqlite_url) as s:
        ledger.commit_in(s, "r1", 1, [a, b], kind=EventKind.CENTRAL_DP_FEDAVG)
    with pytest.raises(db.RegistryError, match=(
            f"^privacy ledger: device {b} has no reserved release in run r1 round 2; only a "
            "reserved release can be committed$")):
        ledger.commit(sqlite_url, "r1", 2, [b])
    assert [e.status for e in ledger.device_events(sqlite_url, b)] == ["reserved"]


# -- queries ---------------------------------------------------------------------------------

def test_device_events_lists_the_devices_own_rows_oldest_first(sqlite_url, tmp_path) -> None:
    a, b = fleet(sqlite_url, tmp_path, [None, None])
    _reserve(sqlite_url, "r1", 1, a, LOCAL)
    _reserve(sqlite_url, "r1", 1, b, LOCAL)
    _reserve(sqlite_url, "r1", 2, a, CENTRAL)
    got = ledger.device_events(sqlite_url, a)
    assert [(e.device_id, e.run_id, e.round_number, e.event, e.status) for e in got] == [
        (a, "r1", 1, LOCAL, "reserved"), (a, "r1", 2, CENTRAL, "reserved")]
    assert got[0].id < got[1].id
    assert [e.round_number for e in ledger.device_events(sqlite_url, b)] == [1]


def test_budget_states_in_id_order_of_all_or_the_given_devices(registry_url, tmp_path) -> None:
    """PostgreSQL returns an updated row last unless asked for an order."""
    a, b, c = fleet(registry_url, tmp_path, [8.0, None, 3.0], delta_cap=None)
    _reserve(registry_url, "r1", 1, a, LOCAL)
    _reserve(registry_url, "r1", 1, c, LOCAL, CENTRAL)
    sql_execute(registry_url, "UPDATE devices SET epsilon_cap = 9.0 WHERE id = :a", a=a)
    states = ledger.budget_states(registry_url, DELTA)
    assert [(s.device_id, s.epsilon_cap, s.delta, len(s.events)) for s in states] == [
        (a, 9.0, DELTA, 1), (b, None, DELTA, 0), (c, 3.0, DELTA, 2)]
    assert _recounted(states[0].epsilon, [LOCAL]) and states[1].epsilon == 0.0
    assert _recounted(states[2].epsilon, [LOCAL, CENTRAL])
    assert [s.device_id for s in ledger.budget_states(registry_url, DELTA, [c, a])] == [a, c]
    with pytest.raises(ValueError, match=r"^delta must be in \(0, 1\), got 1\.5$"):
        ledger.budget_states(registry_url, 1.5)


def test_fleet_rdp_epsilons_of_an_empty_fleet(sqlite_url) -> None:
    db.upgrade(sqlite_url)
    ids, eps, cap = ledger.fleet_rdp_epsilons(sqlite_url, DELTA)
    assert (ids.shape, ids.dtype, eps.shape, eps.dtype, cap.shape, cap.dtype) == (
        (0,), np.dtype(np.int64), (0,), np.dtype(np.float64), (0,), np.dtype(np.float64))


def test_fleet_rdp_epsilons_use_each_devices_delta_and_cap(sqlite_url, tmp_path) -> None:
    a, b = fleet(sqlite_url, tmp_path, [8.0, None], delta_cap=None)
    sql_execute(sqlite_url, "UPDATE devices SET delta_cap = 1e-7 WHERE id = :a", a=a)
    _reserve(sqlite_url, "r1", 1, a, LOCAL)
    _reserve(sqlite_url, "r1", 1, b, LOCAL, CENTRAL)
    ids, eps, cap = ledger.fleet_rdp_epsilons(sqlite_url, DELTA)
    assert ids.tolist() == [a, b] and ids.dtype == np.int64
    assert eps.tolist() == pytest.approx([
        epsilon_from_rdp(rdp_vector([LOCAL]), 1e-7),
        epsilon_from_rdp(rdp_vector([LOCAL, CENTRAL]), DELTA)], rel=1e-12)
    assert cap.tolist() == [8.0, float("inf")]
    with pytest.raises(ValueError, match=r"^delta must be in \(0, 1\), got 0$"):
        ledger.fleet_rdp_epsilons(sqlite_url, 0)


def test_fleet_rdp_epsilons_refuse_a_vector_on_another_order_grid(sqlite_url, tmp_path) -> None:
    (a,) = fleet(sqlite_url, tmp_path, [None])
    _reserve(sqlite_url, "r1", 1, a, LOCAL)
    _drop_sqlite_triggers(sqlite_url)
    sql_execute(sqlite_url, "UPDATE device_budgets SET orders_sha256 = :x", x="0" * 64)
    with pytest.raises(db.RegistryError, match=(
            r"^device_budgets: an RDP vector was computed on another order grid than "
            r"privacy\.accounting\.ORDERS$")):
        ledger.fleet_rdp_epsilons(sqlite_url, DELTA)


def test_fleet_rdp_epsilons_check_the_schema_once_per_database(sqlite_url, monkeypatch) -> None:
    with pytest.raises(db.RegistryError, match=(
            f"^--db: the registry database {re.escape(sqlite_url)} has no fedmsr registry, "
            "this fedmsr expects")):
        ledger.fleet_rdp_epsilons(sqlite_url, DELTA)
    db.upgrade(sqlite_url)
    checks: list[str] = []

    def counted(url: str) -> None:
        checks.append(url)
        db.require_schema(url)

    monkeypatch.setattr(ledger, "require_schema", counted)
    for _ in range(3):
        assert ledger.fleet_rdp_epsilons(sqlite_url, DELTA)[0].size == 0
    assert checks == [sqlite_url]


def test_fleet_rdp_epsilons_name_the_database_a_query_fails_on(sqlite_url) -> None:
    db.upgrade(sqlite_url)
    ledger.fleet_rdp_epsilons(sqlite_url, DELTA)  # the schema is checked: the hot path next
    sql_execute(sqlite_url, "DROP TABLE device_budgets")
    with pytest.raises(db.RegistryError, match=(
            f"^--db: cannot use the registry database {re.escape(sqlite_url)}: no such table: "
            "device_budgets; check --db / FEDMSR_DB and that the database server is running$")):
        ledger.fleet_rdp_epsilons(sqlite_url, DELTA)


def test_fleet_budgets_report_at_each_devices_own_delta(sqlite_url, tmp_path) -> None:
    (a,) = fleet(sqlite_url, tmp_path, [None], delta_cap=1e-7)
    _reserve(sqlite_url, "r1", 1, a, LOCAL)
    got = ledger.fleet_budgets(sqlite_url, 1e-3)
    assert got.caps == [float("inf")] and got.reported_devices == 1
    assert _recounted(got.epsilon_spent_max, [LOCAL], 1e-7)


def test_fleet_budgets_of_a_device_without_caps(sqlite_url, tmp_path) -> None:
    a, b = fleet(sqlite_url, tmp_path, [None, 4.0], delta_cap=None)
    _reserve(sqlite_url, "r1", 1, a, LOCAL)
    got = ledger.fleet_budgets(sqlite_url, DELTA)
    assert got.caps == [float("inf"), 4.0]
    assert _recounted(got.epsilon_spent_max, [LOCAL])
    assert ledger.fleet_budgets(sqlite_url, DELTA, default_cap=3.0).caps == [3.0, 4.0]


def test_kind_epsilons_count_one_kind_only(sqlite_url, tmp_path) -> None:
    a, b = fleet(sqlite_url, tmp_path, [None, None])
    _reserve(sqlite_url, "r1", 1, a, LOCAL, CENTRAL)
    _reserve(sqlite_url, "r1", 2, a, LOCAL)
    with db.session_scope(sqlite_url) as s:
        local = ledger.kind_epsilons(s, EventKind.LOCAL_DP_SGD, DELTA, [b, a])
        central = ledger.kind_epsilons(s, EventKind.CENTRAL_DP_FEDAVG, DELTA, [a, b])
        with pytest.raises(ValueError, match=r"^delta must be in \(0, 1\), got 2$"):
            ledger.kind_epsilons(s, EventKind.LOCAL_DP_SGD, 2, [a])
    assert list(local) == [a, b] and local[b] == 0.0 and central[b] == 0.0
    assert _recounted(local[a], [LOCAL, LOCAL])
    assert _recounted(central[a], [CENTRAL])


# -- check-in reports ------------------------------------------------------------------------

def _disagreements(url: str) -> list[tuple]:
    return sql_rows(url, "SELECT device_id, run_id, detail FROM audit_log "
                      "WHERE action = 'budget.disagreement' ORDER BY id")


def test_a_disagreement_is_returned_and_audited_whole(sqlite_url, tmp_path) -> None:
    (a,) = fleet(sqlite_url, tmp_path, [None])
    _reserve(sqlite_url, "r1", 1, a, LOCAL)
    _reserve(sqlite_url, "r1", 2, a, LOCAL)
    server = ledger.budget_state(sqlite_url, a, DELTA).epsilon
    assert _recounted(server, [LOCAL, LOCAL])
    found = ledger.audit_device_report(sqlite_url, a, LedgerReport(server + 1.0, DELTA, 2),
                                       run_id="r1")
    assert found == ledger.Disagreement(
        device_id=a, direction="server-under-counted", device_epsilon=server + 1.0,
        device_events=2, server_epsilon=server, server_events=2, delta=DELTA)
    ((device, run, detail),) = _disagreements(sqlite_url)
    assert (device, run) == (a, "r1")
    assert json.loads(detail) == {
        "delta": DELTA, "device_epsilon": server + 1.0, "device_events": 2,
        "direction": "server-under-counted", "server_epsilon": server, "server_events": 2}


def test_a_disagreement_is_audited_again_only_when_it_changes(sqlite_url, tmp_path) -> None:
    a, b = fleet(sqlite_url, tmp_path, [None, None])
    _reserve(sqlite_url, "r1", 1, a, LOCAL)
    _reserve(sqlite_url, "r1", 1, b, LOCAL)
    server = ledger.budget_state(sqlite_url, a, DELTA).epsilon
    more, less = LedgerReport(server + 1.0, DELTA, 2), LedgerReport(0.0, DELTA, 0)
    for report in (more, more, less, more):
        assert ledger.audit_device_report(sqlite_url, a, report) is not None
    # Another device with the same figures has its own entry.
    assert ledger.audit_device_report(sqlite_url, b, more) is not None
    # Another action in between does not make the same figures new.
    with db.session_scope(sqlite_url) as s:
        audit.record(s, "device.note", {"why": "test"}, device_id=a)
    assert ledger.audit_device_report(sqlite_url, a, more) is not None
    got = [(d, json.loads(x)["direction"]) for d, _, x in _disagreements(sqlite_url)]
    assert got == [(a, "server-under-counted"), (a, "device-reported-less"),
                   (a, "server-under-counted"), (b, "server-under-counted")]


def test_a_report_is_judged_at_the_tolerances_exact_boundaries(sqlite_url, tmp_path) -> None:
    """The tolerance is REPORT_RTOL relative to the server's figure, absolute below 1."""
    (a,) = fleet(sqlite_url, tmp_path, [None])
    _reserve(sqlite_url, "r1", 1, a, LOCAL)
    server = ledger.budget_state(sqlite_url, a, DELTA).epsilon
    assert 1.0 < server < 2.0  # one release: ~1.98
    tol = ledger.REPORT_RTOL * server

    def direction(epsilon: float, events: int = 1) -> str | None:
        found = ledger.audit_device_report(sqlite_url, a, LedgerReport(epsilon, DELTA, events))
        return None if found is None else found.direction

    assert direction(server) is None
    assert direction(server + tol) is None and direction(server - tol) is None
    assert direction(server + 0.5 * tol) is None and direction(server - 0.5 * tol) is None
    assert direction(server + 1.005e-6 * server) == "server-under-counted"
    assert direction(server - 1.005e-6 * server) == "device-reported-less"
    assert direction(server, events=2) == "server-under-counted"
    assert direction(server, events=0) == "device-reported-less"


# -- reservations: refused inputs, refusals and the audit of a tampered ledger ---------------

def test_reserve_names_each_bad_argument_whole(sqlite_url, tmp_path) -> None:
    (a,) = fleet(sqlite_url, tmp_path, [8.0])
    one = [ledger.Release(a, LOCAL)]
    for run_id, shown in (("", "''"), ("x" * 65, repr("x" * 65)), (5, "5")):
        with pytest.raises(ValueError, match=(
                "^run_id must be a non-empty string of at most 64 characters, got "
                f"{re.escape(shown)}$")):
            ledger.reserve(sqlite_url, run_id, 1, one, DELTA, None)  # type: ignore[arg-type]
    for round_number in (0, 1.0):
        with pytest.raises(ValueError, match=(
                f"^round_number must be an int >= 1, got {round_number}$")):
            ledger.reserve(sqlite_url, "r1", round_number, one, DELTA,  # type: ignore[arg-type]
                           None)
    for cap, shown in ((0.0, "0.0"), (float("inf"), "inf"), (-2, "-2")):
        with pytest.raises(ValueError, match=(
                f"^default_cap must be a finite number > 0 or None, got {shown}$")):
            ledger.reserve(sqlite_url, "r1", 1, one, DELTA, cap)
    with pytest.raises(ValueError, match=(
            r"^device ids must be ints \(registry devices\.id\), got '1'$")):
        ledger.reserve(sqlite_url, "r1", 1, [ledger.Release("1", LOCAL)],  # type: ignore[arg-type]
                       DELTA, None)
    for bad in (LOCAL, ledger.Release(a, "local")):
        with pytest.raises(ValueError, match=(
                f"^releases must be Release\\(device_id, DpEvent\\), got {re.escape(repr(bad))}$")):
            ledger.reserve(sqlite_url, "r1", 1, [bad], DELTA, None)  # type: ignore[list-item]
    with pytest.raises(ValueError, match=(
            f"^device {a} has two central-dp-fedavg releases in one reservation; one per "
            r"\(device, round, kind\)$")):
        ledger.reserve(sqlite_url, "r1", 1, [*one, ledger.Release(a, CENTRAL)] +
                       [ledger.Release(a, CENTRAL)], DELTA, None)
    assert ledger.ledger_event_count(sqlite_url) == 0
    # The bounds themselves are accepted.
    _reserve(sqlite_url, "x" * 64, 1, a, LOCAL)
    assert ledger.reserve(sqlite_url, "r1", 1, [], DELTA, None) == ledger.Reservation((), ())


def test_unknown_devices_are_named_whole(sqlite_url, tmp_path) -> None:
    (a,) = fleet(sqlite_url, tmp_path, [8.0])
    with pytest.raises(db.RegistryError, match="^device: no registry device with id 999$"):
        ledger.reserve(sqlite_url, "r1", 1, [ledger.Release(a, LOCAL),
                                             ledger.Release(999, LOCAL)], DELTA, None)
    with pytest.raises(db.RegistryError, match=(
            r"^device: no registry device with id 997 \(and 2 more\)$")):
        ledger.reserve(sqlite_url, "r1", 1, [ledger.Release(i, LOCAL) for i in (999, 998, 997)],
                       DELTA, None)
    for call in (lambda: ledger.eligible(sqlite_url, [a, 999], LOCAL, DELTA, 8.0),
                 lambda: ledger.budget_state(sqlite_url, 999, DELTA)):
        with pytest.raises(db.RegistryError, match="^device: no registry device with id 999$"):
            call()
    assert ledger.ledger_event_count(sqlite_url) == 0


def test_a_round_resumed_with_other_dp_settings_is_refused_whole(sqlite_url, tmp_path) -> None:
    (a,) = fleet(sqlite_url, tmp_path, [8.0])
    _reserve(sqlite_url, "r1", 1, a, LOCAL)
    with pytest.raises(db.RegistryError, match=re.escape(
            f"privacy ledger: device {a} already has a local-dp-sgd release for run r1 round 1 "
            "with q=0.05, sigma=1.0, steps=20; it cannot be re-planned as q=0.05, sigma=2.0, "
            "steps=20 (resume with the run's original DP settings)") + "$"):
        ledger.reserve(sqlite_url, "r1", 1, [ledger.Release(a, DpEvent(0.05, 2.0, 20))],
                       DELTA, None)
    assert ledger.ledger_event_count(sqlite_url) == 1


def test_a_vector_on_another_order_grid_is_refused_by_reserve_and_state(
        sqlite_url, tmp_path) -> None:
    (a,) = fleet(sqlite_url, tmp_path, [None])
    _reserve(sqlite_url, "r1", 1, a, LOCAL)
    _drop_sqlite_triggers(sqlite_url)
    sql_execute(sqlite_url, "UPDATE device_budgets SET orders_sha256 = :x", x="0" * 64)
    message = (f"^device_budgets: device {a}'s RDP vector was computed on another order grid "
               r"than privacy\.accounting\.ORDERS$")
    with pytest.raises(db.RegistryError, match=message):
        ledger.reserve(sqlite_url, "r1", 2, [ledger.Release(a, LOCAL)], DELTA, None)
    with pytest.raises(db.RegistryError, match=message):
        ledger.budget_state(sqlite_url, a, DELTA)
    assert ledger.ledger_event_count(sqlite_url) == 1


@pytest.mark.parametrize("cap", [8.0, None])
def test_rows_below_the_cache_refuse_with_the_whole_reason_and_audit(sqlite_url, tmp_path,
                                                                      cap) -> None:
    (a,) = fleet(sqlite_url, tmp_path, [cap])
    for r in (1, 2, 3):
        _reserve(sqlite_url, "r1", r, a, LOCAL)
    _drop_sqlite_triggers(sqlite_url)
    sql_execute(sqlite_url, "DELETE FROM privacy_events WHERE round_number = 1")
    out = ledger.reserve(sqlite_url, "r1", 4, [ledger.Release(a, LOCAL)], DELTA, None)
    cached = float(epsilon_from_rdp(rdp_vector([LOCAL] * 3), DELTA))
    rows = float(epsilon_from_rdp(rdp_vector([LOCAL] * 2), DELTA))
    assert out.reserved == ()
    ((refusal),) = out.refused
    assert (refusal.device_id, refusal.name, refusal.epsilon_cap, refusal.delta) == (
        a, "cam-0", float("inf") if cap is None else cap, DELTA)
    assert refusal.epsilon_spent == pytest.approx(cached, rel=1e-9)
    assert refusal.reason == (
        f"its ledger rows (2, epsilon {rows:.4g}) hold less than its cached RDP vector "
        f"(3 events, epsilon {cached:.4g}): rows were deleted or rewritten")
    ((detail),) = mismatch_details(sqlite_url)
    assert detail == {"cached_events": 3, "rows": 2, "cached_epsilon": pytest.approx(cached),
                      "rows_epsilon": pytest.approx(rows), "decision": "refused"}
    assert sql_rows(sqlite_url, "SELECT device_id, run_id FROM audit_log WHERE action = "
                             "'budget.ledger-mismatch'") == [(a, "r1")]
    assert ledger.ledger_event_count(sqlite_url) == 2


def test_a_tampered_device_is_refused_on_the_runs_cap_and_delta_and_the_rest_go_on(
        sqlite_url, tmp_path) -> None:
    """A device with neither cap nor delta of its own is judged on the run's: its tamper
    refusal names them; and the other devices of the same reservation are still charged."""
    a, b = fleet(sqlite_url, tmp_path, [None, None], delta_cap=None)
    for r in (1, 2, 3):
        assert ledger.reserve(sqlite_url, "r1", r, [ledger.Release(a, LOCAL)], DELTA,
                              8.0).reserved == (a,)
    _drop_sqlite_triggers(sqlite_url)
    sql_execute(sqlite_url, "DELETE FROM privacy_events WHERE round_number = 1")
    out = ledger.reserve(sqlite_url, "r1", 4, [ledger.Release(a, LOCAL),
                                               ledger.Release(b, LOCAL)], DELTA, 8.0)
    assert out.reserved == (b,)
    ((refusal),) = out.refused
    assert (refusal.device_id, refusal.epsilon_cap, refusal.delta) == (a, 8.0, DELTA)


def test_a_devices_own_delta_decides_its_charge_and_names_its_refusal(sqlite_url,
                                                                    tmp_path) -> None:
    """A device's own delta cap, tighter than the run's, is the delta it is charged at: a
    cap it fits at the run's delta but not at its own refuses it, at its own delta."""
    own = 1e-9
    cap = (pld_epsilon([LOCAL], DELTA) + pld_epsilon([LOCAL], own)) / 2
    (a,) = fleet(sqlite_url, tmp_path, [cap], delta_cap=own)
    out = ledger.reserve(sqlite_url, "r1", 1, [ledger.Release(a, LOCAL)], DELTA, None)
    assert out.reserved == ()
    ((refusal),) = out.refused
    assert (refusal.device_id, refusal.epsilon_cap, refusal.delta) == (a, cap, own)


def test_a_one_character_run_id_is_a_run_id_and_two_unknown_devices_are_counted(
        sqlite_url, tmp_path) -> None:
    (a,) = fleet(sqlite_url, tmp_path, [None])
    _reserve(sqlite_url, "r", 1, a, LOCAL)
    with pytest.raises(db.RegistryError,
                       match=r"^device: no registry device with id 998 \(and 1 more\)$"):
        ledger.reserve(sqlite_url, "r", 2, [ledger.Release(998, LOCAL),
                                            ledger.Release(999, LOCAL)], DELTA, None)


def test_a_zeroed_cache_is_audited_and_charged_from_the_rows(sqlite_url, tmp_path) -> None:
    (a,) = fleet(sqlite_url, tmp_path, [None])
    for r in (1, 2):
        _reserve(sqlite_url, "r1", r, a, LOCAL)
    _drop_sqlite_triggers(sqlite_url)
    sql_execute(sqlite_url, "UPDATE device_budgets SET rdp = :v",
             v=np.zeros_like(rdp_vector([LOCAL])).tobytes())
    _reserve(sqlite_url, "r2", 1, a, LOCAL)
    ((detail),) = mismatch_details(sqlite_url)
    assert detail == {"cached_events": 2, "rows": 2, "cached_epsilon": 0.0,
                      "rows_epsilon": pytest.approx(epsilon_from_rdp(rdp_vector([LOCAL] * 2),
                                                                     DELTA)),
                      "decision": "charged from the rows"}
    state = ledger.budget_state(sqlite_url, a, DELTA)
    assert state.epsilon_rdp == pytest.approx(epsilon_from_rdp(rdp_vector([LOCAL] * 3), DELTA),
                                              rel=1e-9)
    assert sql_rows(sqlite_url, "SELECT events FROM device_budgets") == [(3,)]
    assert _recounted(state.epsilon, [LOCAL] * 3)


def test_a_refusal_by_the_cap_reports_the_spend_before_the_release(sqlite_url,
                                                                     tmp_path) -> None:
    below = independent_epsilon([LOCAL] * 2, DELTA)
    cap = (below + independent_epsilon([LOCAL] * 3, DELTA)) / 2
    a, b = fleet(sqlite_url, tmp_path, [cap, None], delta_cap=None)
    for r in (1, 2):
        _reserve(sqlite_url, "r1", r, a, LOCAL)
    out = ledger.reserve(sqlite_url, "r1", 3, [ledger.Release(a, LOCAL),
                                               ledger.Release(b, LOCAL)], DELTA, None)
    assert out.reserved == (b,)
    ((refusal),) = out.refused
    assert (refusal.device_id, refusal.name, refusal.epsilon_cap, refusal.delta,
            refusal.reason) == (a, "cam-0", cap, DELTA, "")
    assert _recounted(refusal.epsilon_spent, [LOCAL] * 2)
    assert ledger.eligible(sqlite_url, [b, a], LOCAL, DELTA, None) == ([b], [refusal])
    assert ledger.ledger_event_count(sqlite_url) == 3
