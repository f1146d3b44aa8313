"""The server's privacy ledger (issue 4) on SQLite and PostgreSQL: reservations charge for
ever, are idempotent per (device, run, round, kind), never take a device past its cap (also
under real concurrent transactions), and the database itself keeps the ledger append-only.
Epsilon figures are checked against dp-accounting's PLD accountant called directly."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from fl_server import privacy_ledger as ledger
from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
from fl_server.registry import db
from fl_server.registry.devices import device_ids_for_indices
from fl_server.registry.models import Device
from privacy.accounting import DpEvent, EventKind, epsilon_from_rdp, rdp_vector
from privacy.wire.budget import LedgerReport
from tests.reference_memo import reference

DELTA = 1e-5
LOCAL = DpEvent(0.05, 1.0, 20)                                   # one round of DP-SGD
CENTRAL = DpEvent(0.2, 1.5, 1, EventKind.CENTRAL_DP_FEDAVG)      # one DP-FedAvg round


@reference
def independent_epsilon(events: list[DpEvent], delta: float, interval: float = 1e-4) -> float:
    """dp-accounting's own PLD accountant over the events (not our code), fine grid."""
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=interval)
    for e in events:
        acc.compose(dp_accounting.PoissonSampledDpEvent(
            e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)), e.steps)
    return acc.get_epsilon(delta)


def fleet(url: str, tmp_path: Path, caps: list[float | None], delta_cap: float | None = DELTA
          ) -> list[int]:
    """Enroll one device per cap; their registry ids, in order."""
    db.upgrade(url)
    enroll(url, [DeviceSpec(f"cam-{i}", epsilon_cap=c, delta_cap=delta_cap)
                 for i, c in enumerate(caps)], BundleOptions(bundles_dir=tmp_path / "b"))
    with db.session_scope(url) as s:
        return [s.query(Device.id).filter(Device.name == f"cam-{i}").scalar()
                for i in range(len(caps))]


def rows(url: str, sql: str) -> list[tuple]:
    with db.get_engine(url).connect() as c:
        return [tuple(r) for r in c.execute(text(sql))]


def cap_between(events: list[DpEvent], extra: DpEvent) -> float:
    """A cap that `events` fit in but `events + [extra]` does not (by the reported figure)."""
    below, above = (ledger.pld_epsilon(h, DELTA) for h in (events, [*events, extra]))
    assert below < above
    return (below + above) / 2


def test_reserve_charges_once_per_round_and_commit_is_the_only_change(
        registry_url, tmp_path) -> None:
    a, b = fleet(registry_url, tmp_path, [8.0, None])
    releases = [ledger.Release(a, LOCAL), ledger.Release(a, CENTRAL), ledger.Release(b, LOCAL)]
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    first = ledger.reserve(registry_url, "r1", 1, releases, DELTA, default_cap=None)
    after = dt.datetime.now(dt.timezone.utc)
    # One reservation, one instant: its rows and the move of the cached vector carry it.
    for device in (a, b):
        assert rows(registry_url, "SELECT DISTINCT reserved_at FROM privacy_events "
                                  f"WHERE device_id = {device}") == \
            rows(registry_url, f"SELECT updated_at FROM device_budgets WHERE device_id = {device}")
    assert first == ledger.Reservation((a, b), ())
    # Resume re-reserves the same round: nothing is charged twice.
    assert ledger.reserve(registry_url, "r1", 1, releases, DELTA, None) == first
    assert ledger.ledger_event_count(registry_url) == 3
    state = ledger.budget_state(registry_url, a, DELTA)
    assert [(e.kind, e.status) for e in state.events] == [
        ("local-dp-sgd", "reserved"), ("central-dp-fedavg", "reserved")]
    assert state.rounds == 1 and state.epsilon_cap == 8.0 and state.last_event == state.events[-1]
    exact = independent_epsilon([LOCAL, CENTRAL], DELTA)
    assert exact <= state.epsilon <= 1.02 * exact  # the reported figure is never below
    # The cached vector is the composition of the rows (the hot path agrees with history).
    assert state.epsilon_rdp == pytest.approx(
        epsilon_from_rdp(rdp_vector([LOCAL, CENTRAL]), DELTA), rel=1e-12)
    ledger.commit(registry_url, "r1", 1, [a, b])
    ledger.commit(registry_url, "r1", 1, [a])  # again: a no-op, not an error
    committed = ledger.budget_state(registry_url, a, DELTA)
    assert {e.status for e in committed.events} == {"committed"}
    assert all(e.committed_at is not None for e in committed.events)
    # When each release was reserved and committed, in UTC, as the history shows them.
    for e in committed.events:
        assert e.reserved_at.tzinfo is not None and before <= e.reserved_at <= after
        assert e.committed_at is not None and e.reserved_at <= e.committed_at
        assert e.to_json_dict()["reserved_at"] == e.reserved_at.isoformat()
    assert committed.epsilon == state.epsilon  # committing changes no spend
    with pytest.raises(db.RegistryError, match="no reserved release"):
        ledger.commit(registry_url, "r1", 2, [a])


def test_resume_commits_the_checkpointed_rounds_only(registry_url, tmp_path) -> None:
    """Killed between round 2's checkpoint and its commit, round 3 reserved but never
    aggregated: resume after checkpoint 2 commits rounds 1-2 of this run, nothing else."""
    a, b = fleet(registry_url, tmp_path, [None, None])
    for n in (1, 2, 3):
        ledger.reserve(registry_url, "r1", n, [ledger.Release(a, LOCAL),
                                               ledger.Release(b, LOCAL)], DELTA, None)
    ledger.reserve(registry_url, "other", 1, [ledger.Release(a, LOCAL)], DELTA, None)
    ledger.commit(registry_url, "r1", 1, [a, b])
    assert ledger.commit_through(registry_url, "r1", 2) == 2  # round 2's two rows
    assert ledger.commit_through(registry_url, "r1", 2) == 0  # idempotent
    status = {(e.run_id, e.round_number, e.status)
              for d in (a, b) for e in ledger.budget_state(registry_url, d, DELTA).events}
    assert status == {("r1", 1, "committed"), ("r1", 2, "committed"), ("r1", 3, "reserved"),
                      ("other", 1, "reserved")}
    assert ledger.ledger_event_count(registry_url) == 7  # no row added or lost
    with pytest.raises(ValueError, match="round_number"):
        ledger.commit_through(registry_url, "r1", 0)


def test_reserved_counts_after_a_sigkill_and_resume_does_not_double_charge(
        registry_url, tmp_path) -> None:
    """A server killed between reservation and aggregation: the release stays charged."""
    (a,) = fleet(registry_url, tmp_path, [8.0])
    script = (
        "import os, signal, sys\n"
        "from fl_server import privacy_ledger as L\n"
        "from privacy.accounting import DpEvent\n"
        f"L.reserve(sys.argv[1], 'r1', 1, [L.Release({a}, DpEvent(0.05, 1.0, 20))], 1e-5, None)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script, registry_url], cwd=Path.cwd(),
                          capture_output=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    before = ledger.budget_state(registry_url, a, DELTA)
    assert [(e.run_id, e.round_number, e.status) for e in before.events] == [("r1", 1, "reserved")]
    assert ledger.reserve(registry_url, "r1", 1, [ledger.Release(a, LOCAL)], DELTA, None
                          ).reserved == (a,)
    after = ledger.budget_state(registry_url, a, DELTA)
    assert len(after.events) == 1 and after.epsilon == before.epsilon > 0


def test_a_device_is_refused_before_it_would_pass_its_cap(registry_url, tmp_path) -> None:
    history = [LOCAL] * 3
    cap = cap_between(history, LOCAL)
    a, b, c = fleet(registry_url, tmp_path, [cap, None, 100.0])
    for r in (1, 2, 3):
        assert ledger.reserve(registry_url, "r1", r, [ledger.Release(a, LOCAL)], DELTA, None
                              ).reserved == (a,)
    # b has no cap of its own: the run's default applies; c's own cap is far away.
    releases = [ledger.Release(d, LOCAL) for d in (a, b, c)]
    out = ledger.reserve(registry_url, "r1", 4, releases, DELTA, default_cap=0.01)
    assert out.reserved == (c,)
    (ra, rb) = out.refused
    assert (ra.device_id, ra.name, ra.epsilon_cap, ra.delta) == (a, "cam-0", cap, DELTA)
    assert (rb.device_id, rb.epsilon_cap, rb.epsilon_spent) == (b, 0.01, 0.0)
    state = ledger.budget_state(registry_url, a, DELTA)
    assert len(state.events) == 3 and ra.epsilon_spent == state.epsilon <= cap
    # Independent check: what was refused really would have passed the cap.
    assert independent_epsilon([*history, LOCAL], DELTA) > cap * 0.98
    assert [e.round_number for e in state.events] == [1, 2, 3]


def test_rdp_says_over_but_the_reported_figure_fits(registry_url, tmp_path) -> None:
    """Stage 2: RDP is looser than PLD; a cap between them admits the release."""
    events = [LOCAL] * 4
    pld, rdp = ledger.pld_epsilon(events, DELTA), epsilon_from_rdp(rdp_vector(events), DELTA)
    assert pld < rdp
    cap = (pld + rdp) / 2
    (a,) = fleet(registry_url, tmp_path, [cap])
    for r in range(1, 4):
        ledger.reserve(registry_url, "r1", r, [ledger.Release(a, LOCAL)], DELTA, None)
    assert ledger.eligible(registry_url, [a], LOCAL, DELTA, None) == ([a], [])
    assert ledger.reserve(registry_url, "r1", 4, [ledger.Release(a, LOCAL)], DELTA, None
                          ).reserved == (a,)
    reported = ledger.budget_state(registry_url, a, DELTA).epsilon
    assert reported <= cap
    # independently: dp-accounting's PLD fits the cap, its RDP accountant does not, and the
    # reported figure is not below dp-accounting's
    exact = independent_epsilon(events, DELTA)
    rdp_accountant = dp_accounting.rdp.RdpAccountant()
    rdp_accountant.compose(dp_accounting.PoissonSampledDpEvent(
        LOCAL.sample_rate, dp_accounting.GaussianDpEvent(LOCAL.noise_multiplier)),
        LOCAL.steps * len(events))
    assert exact <= reported * (1 + 1e-9) and exact <= cap < rdp_accountant.get_epsilon(DELTA)


def test_eligible_agrees_with_reserve_and_writes_nothing(registry_url, tmp_path) -> None:
    cap = cap_between([LOCAL, CENTRAL], LOCAL)
    a, b, c = fleet(registry_url, tmp_path, [cap, cap, None])
    ledger.reserve(registry_url, "r1", 1, [ledger.Release(a, LOCAL), ledger.Release(a, CENTRAL)],
                   DELTA, None)
    count = ledger.ledger_event_count(registry_url)
    ok, refused = ledger.eligible(registry_url, [c, a, b], LOCAL, DELTA, None)
    assert ok == [c, b] and [r.device_id for r in refused] == [a]
    assert ledger.ledger_event_count(registry_url) == count
    # Both planned events together (mode "both"): a device fits only if all of them do.
    ok, _ = ledger.eligible(registry_url, [b, c], [LOCAL, CENTRAL, ], DELTA, None)
    assert ok == [b, c]
    ok, refused = ledger.eligible(registry_url, [b], [LOCAL, CENTRAL, LOCAL], DELTA, None)
    assert ok == [] and refused[0].epsilon_spent == 0.0
    out = ledger.reserve(registry_url, "r1", 2, [ledger.Release(d, LOCAL) for d in (a, b, c)],
                         DELTA, None)
    assert out.reserved == (b, c) and [r.device_id for r in out.refused] == [a]


def test_eligible_on_resume_counts_a_reserved_round_once(registry_url, tmp_path) -> None:
    """A round reserved before a crash is spent already: the resumed pre-check must not add
    it again (and must still refuse a release that is new)."""
    (a,) = fleet(registry_url, tmp_path, [cap_between([LOCAL, LOCAL], LOCAL)])
    for r in (1, 2):
        ledger.reserve(registry_url, "r1", r, [ledger.Release(a, LOCAL)], DELTA, None)
    assert ledger.eligible(registry_url, [a], LOCAL, DELTA, None)[0] == []
    assert ledger.eligible(registry_url, [a], LOCAL, DELTA, None, run_id="r1",
                           round_number=2) == ([a], [])
    assert ledger.eligible(registry_url, [a], LOCAL, DELTA, None, run_id="r1",
                           round_number=3)[0] == []
    assert ledger.reserve(registry_url, "r1", 2, [ledger.Release(a, LOCAL)], DELTA, None
                          ).reserved == (a,)
    with pytest.raises(ValueError, match="both run_id and round_number"):
        ledger.eligible(registry_url, [a], LOCAL, DELTA, None, run_id="r1")


def test_bad_reservations_write_nothing(registry_url, tmp_path) -> None:
    (a,) = fleet(registry_url, tmp_path, [8.0])
    ledger.reserve(registry_url, "r1", 1, [ledger.Release(a, LOCAL)], DELTA, None)
    resumed_differently = DpEvent(0.05, 2.0, 20)
    with pytest.raises(db.RegistryError, match="cannot be re-planned"):
        ledger.reserve(registry_url, "r1", 1, [ledger.Release(a, resumed_differently)],
                       DELTA, None)
    with pytest.raises(db.RegistryError, match="no registry device with id 999"):
        ledger.reserve(registry_url, "r1", 2, [ledger.Release(a, LOCAL),
                                               ledger.Release(999, LOCAL)], DELTA, None)
    with pytest.raises(ValueError, match="two local-dp-sgd releases"):
        ledger.reserve(registry_url, "r1", 2, [ledger.Release(a, LOCAL)] * 2, DELTA, None)
    with pytest.raises(ValueError, match="round_number"):
        ledger.reserve(registry_url, "r1", 0, [ledger.Release(a, LOCAL)], DELTA, None)
    assert ledger.ledger_event_count(registry_url) == 1


def test_the_ledger_is_append_only_in_the_database(registry_url, tmp_path) -> None:
    """Raw SQL, not the API: the triggers refuse every change but reserved -> committed."""
    (a,) = fleet(registry_url, tmp_path, [8.0])
    ledger.reserve(registry_url, "r1", 1, [ledger.Release(a, LOCAL)], DELTA, None)
    ledger.reserve(registry_url, "r1", 2, [ledger.Release(a, LOCAL)], DELTA, None)
    ledger.commit(registry_url, "r1", 2, [a])
    engine = db.get_engine(registry_url)
    refused = [
        "DELETE FROM privacy_events",
        "UPDATE privacy_events SET steps = 1 WHERE round_number = 1",
        ("UPDATE privacy_events SET status = 'reserved', committed_at = NULL "
         "WHERE round_number = 2"),
        ("UPDATE privacy_events SET status = 'committed', committed_at = reserved_at, "
         "noise_multiplier = 50 WHERE round_number = 1"),
        "DELETE FROM device_budgets",
        "UPDATE device_budgets SET events = 0",
    ]
    if engine.dialect.name == "postgresql":
        refused += ["TRUNCATE privacy_events", "TRUNCATE device_budgets"]
    for statement in refused:
        with pytest.raises(DBAPIError, match="append-only|never decrease|must equal"), \
                engine.begin() as c:
            c.execute(text(statement))
    with engine.begin() as c:  # the one change allowed
        c.execute(text("UPDATE privacy_events SET status = 'committed', "
                       "committed_at = reserved_at WHERE round_number = 1"))
    assert rows(registry_url, "SELECT round_number, steps, status FROM privacy_events "
                "ORDER BY round_number") == [(1, 20, "committed"), (2, 20, "committed")]
    assert rows(registry_url, "SELECT events FROM device_budgets") == [(2,)]


def _reserve_in_thread(url: str, run_id: str, device: int, out: dict, barrier: threading.Barrier
                       ) -> threading.Thread:
    def work() -> None:
        barrier.wait()
        out[run_id] = ledger.reserve(url, run_id, 1, [ledger.Release(device, LOCAL)], DELTA,
                                     None)
    thread = threading.Thread(target=work, name=run_id)
    thread.start()
    return thread


def test_concurrent_reservations_never_pass_the_cap(registry_url, tmp_path) -> None:
    """Six transactions at once (six runs) for one device with room for two more releases."""
    cap = cap_between([LOCAL] * 3, LOCAL)
    (a,) = fleet(registry_url, tmp_path, [cap])
    ledger.reserve(registry_url, "r0", 1, [ledger.Release(a, LOCAL)], DELTA, None)
    out: dict[str, ledger.Reservation] = {}
    barrier = threading.Barrier(6)
    threads = [_reserve_in_thread(registry_url, f"run-{i}", a, out, barrier) for i in range(6)]
    for t in threads:
        t.join(timeout=120)
    assert len(out) == 6
    assert sum(bool(r.reserved) for r in out.values()) == 2
    state = ledger.budget_state(registry_url, a, DELTA)
    assert len(state.events) == 3 and state.epsilon <= cap
    assert independent_epsilon([e.event for e in state.events], DELTA) <= cap
    # No lost update: the cached vector is still the composition of every row.
    assert state.epsilon_rdp == pytest.approx(
        epsilon_from_rdp(rdp_vector([LOCAL] * 3), DELTA), rel=1e-12)


# Row locks are PostgreSQL's; SQLite serialises writers (the test above runs on both).
@pytest.mark.parametrize("registry_url", ["postgresql"], indirect=True)
def test_a_second_server_waits_for_the_first_and_sees_its_charge(
        registry_url, tmp_path, monkeypatch) -> None:
    """PostgreSQL, deterministic interleaving: server A has locked the device and decided
    (its release fits) but not committed; server B's reservation must wait on A's row lock
    (observed in pg_locks), then see A's charge and refuse."""
    cap = cap_between([LOCAL, LOCAL], LOCAL)  # one release already there, room for one more
    (a,) = fleet(registry_url, tmp_path, [cap])
    ledger.reserve(registry_url, "r0", 1, [ledger.Release(a, LOCAL)], DELTA, None)
    decided, release = threading.Event(), threading.Event()
    charge = ledger._charge

    holder: list[int] = []  # server A's backend: the one B must be waiting on

    def slow_charge(session, *args, **kwargs):  # only server A pauses, after deciding
        charge(session, *args, **kwargs)
        if threading.current_thread().name == "server-A":
            holder.append(session.execute(text("SELECT pg_backend_pid()")).scalar())
            decided.set()
            assert release.wait(60)
    monkeypatch.setattr(ledger, "_charge", slow_charge)
    out: dict[str, ledger.Reservation] = {}

    def run(name: str) -> None:
        out[name] = ledger.reserve(registry_url, name, 1, [ledger.Release(a, LOCAL)],
                                   DELTA, None)
    server_a = threading.Thread(target=run, args=("server-A",), name="server-A")
    server_a.start()
    assert decided.wait(60)
    server_b = threading.Thread(target=run, args=("server-B",), name="server-B")
    server_b.start()
    with db.get_engine(registry_url).connect() as c:
        waiting = 0
        for _ in range(6000):  # poll until a backend is blocked by A's (and only A's)
            waiting = c.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE :a = ANY(pg_blocking_pids(pid))"),
                {"a": holder[0]}).scalar()
            c.rollback()
            if waiting or not server_b.is_alive():
                break
            threading.Event().wait(0.01)
        assert waiting >= 1 and server_b.is_alive()
    release.set()
    server_a.join(60)
    server_b.join(60)
    assert out["server-A"].reserved == (a,)
    assert out["server-B"].reserved == () and out["server-B"].refused[0].device_id == a
    assert ledger.budget_state(registry_url, a, DELTA).epsilon <= cap


def test_device_report_disagreements_go_to_the_audit_log(registry_url, tmp_path) -> None:
    (a,) = fleet(registry_url, tmp_path, [8.0])
    ledger.reserve(registry_url, "r1", 1, [ledger.Release(a, LOCAL)], DELTA, None)
    server = ledger.budget_state(registry_url, a, DELTA)
    agree = LedgerReport(server.epsilon, DELTA, 1)
    assert ledger.audit_device_report(registry_url, a, agree) is None
    more = LedgerReport(independent_epsilon([LOCAL, LOCAL], DELTA), DELTA, 2)
    found = ledger.audit_device_report(registry_url, a, more, run_id="r1")
    assert found is not None and found.direction == "server-under-counted"
    assert found.server_events == 1 and found.device_events == 2
    ledger.audit_device_report(registry_url, a, more, run_id="r1")  # same: not repeated
    less = ledger.audit_device_report(registry_url, a, LedgerReport(0.0, DELTA, 0))
    assert less is not None and less.direction == "device-reported-less"
    actions = rows(registry_url, "SELECT action, device_id, detail FROM audit_log "
                   "WHERE action = 'budget.disagreement' ORDER BY id")
    assert len(actions) == 2 and actions[0][1] == a
    assert '"server-under-counted"' in actions[0][2] and '"device-reported-less"' in actions[1][2]


def test_fleet_epsilons_and_index_mapping(registry_url, tmp_path) -> None:
    a, b, c = fleet(registry_url, tmp_path, [8.0, None, 3.0])
    ledger.reserve(registry_url, "r1", 1, [ledger.Release(a, LOCAL), ledger.Release(c, CENTRAL)],
                   DELTA, None)
    ids, eps, caps = ledger.fleet_rdp_epsilons(registry_url, DELTA)
    assert list(ids) == [a, c] and list(caps) == [8.0, 3.0]
    np.testing.assert_allclose(eps, [epsilon_from_rdp(rdp_vector([e]), DELTA)
                                     for e in (LOCAL, CENTRAL)], rtol=1e-12)
    assert device_ids_for_indices(registry_url, [2, 0]) == {0: a, 2: c}
    with pytest.raises(db.RegistryError, match="synthetic index 7"):
        device_ids_for_indices(registry_url, [7])
    assert b not in ids


def test_ledger_module_does_not_leak_into_device_builds() -> None:
    """fl_client must not import fl_server (a device build has no database)."""
    code = ("import sys, fl_client.device_ledger; "
            "assert not any(m.startswith(('fl_server', 'sqlalchemy')) for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path.cwd(),
                   env={**os.environ}, timeout=120)


def test_budget_metrics_read_the_ledger(registry_url, tmp_path) -> None:
    """The metrics observer (live runs) and `fedmsr monitor` (between runs) get each
    device's spend and cap from the ledger; a revoked device is no longer tracked."""
    from types import SimpleNamespace

    from fl_server.persisted_metrics import registry_snapshot
    from fl_server.revocation import revoke
    from monitoring.metrics import FedmsrMetrics
    from monitoring.observer import MetricsObserver

    a, b, c, d = fleet(registry_url, tmp_path, [8.0, 8.0, None, 8.0])
    ledger.reserve(registry_url, "r1", 1, [ledger.Release(i, LOCAL) for i in (a, b, d)],
                   DELTA, None)
    rdp = float(epsilon_from_rdp(rdp_vector([LOCAL]), DELTA))
    with db.get_engine(registry_url).begin() as conn:  # the operator lowers b's cap later
        conn.execute(text(f"UPDATE devices SET epsilon_cap = {rdp / 2} WHERE id = {b}"))
    revoke(registry_url, "cam-3", "lost")
    budgets = ledger.fleet_budgets(registry_url, DELTA, default_cap=4.0)
    reported = ledger.budget_state(registry_url, a, DELTA).epsilon  # what budget show prints
    assert reported < rdp
    assert budgets.epsilon_rdp_bound == pytest.approx([rdp, rdp, 0.0])
    assert budgets.epsilon_spent_max == pytest.approx(reported, rel=1e-12)
    assert (budgets.exhausted, budgets.near_cap) == (1, 0)  # b: cap rdp / 2 < reported
    assert budgets.caps == [8.0, rdp / 2, 4.0]

    metrics = FedmsrMetrics()
    observer = MetricsObserver(metrics, budgets=lambda: ledger.fleet_budgets(registry_url, DELTA))
    observer.run_started(SimpleNamespace(rounds=1, dp_sgd=True, devices=4), 0)
    value = metrics.registry.get_sample_value
    assert value("fedmsr_budget_tracked_devices") == 3
    # b's cap (rdp / 2) is under its reported spend too
    assert reported > rdp / 2 and value("fedmsr_devices_budget_exhausted") == 1
    assert value("fedmsr_fleet_epsilon_spent_max") == pytest.approx(reported)
    assert value("fedmsr_fleet_epsilon_rdp_bound_max") == pytest.approx(rdp)

    between_runs = FedmsrMetrics(between_runs=True)
    snapshot = registry_snapshot(registry_url)
    assert snapshot is not None
    snapshot.apply(between_runs)
    assert between_runs.registry.get_sample_value("fedmsr_budget_tracked_devices") == 3
    assert between_runs.registry.get_sample_value("fedmsr_devices_budget_exhausted") == 1
    assert c not in ledger.fleet_rdp_epsilons(registry_url, DELTA)[0]
