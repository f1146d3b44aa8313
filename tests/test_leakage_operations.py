"""Operating leakage and randomized release: which attacks crossed the alert level, the
fleet's accumulated release epsilon, and where an operator sees them (the round's record
and console line, `fedmsr leakage show`, the metrics and the leakage dashboard).

Registry tests run on SQLite and PostgreSQL (`registry_url`). Release epsilons are checked
against dp-accounting's own PLD accountant on the plain Gaussian mechanism, not against
the code under test.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from rich.console import Console

from fl_server import collection as collection_module
from fl_server import privacy_ledger as ledger
from fl_server.cli import main
from fl_server.collection import LEAKAGE_FILE, Attacker, Collector
from fl_server.config import RunConfig
from fl_server.federation import _print_round
from fl_server.leakage_tracker import Tracked, crossed
from fl_server.registry import db
from fl_server.registry.models import LeakageReport
from fl_server.release_budget import KIND, ReleaseBudget, fleet_release
from fl_server.representations import NewUnlinkable, UnlinkableStore
from monitoring import dashboards
from monitoring.metrics import FedmsrMetrics
from monitoring.observer import MetricsObserver
from privacy.accounting import DpEvent
from privacy.payload import encode_payload
from privacy.release_mechanism import GaussianRelease
from privacy.wire.round_record import LeakageCrossed, ReleaseEpsilon, RoundRecord
from tests.helpers import round_record
from tests.test_monitoring import fake_cfg, value
from tests.test_privacy_ledger import fleet
from tests.test_release_ledger import gaussian_epsilon

DELTA = 1e-5
M = 8
RELEASE = GaussianRelease(1.0, 4.0)
LOCAL = DpEvent(0.05, 1.0, 20)
#: PL(k) curves a collection could measure: identity_set gains 0.31, linkage 0.3, the
#: others stay under the default alert level (0.1).
REPORT = {
    "device_chance": 0.25,
    "curves": {"identity_set": {1: 0.3, 2: 0.45, 8: 0.61},
               "routine": {1: 0.4, 8: 0.45},
               "linkage_auc": {1: 0.55, 4: 0.7, 8: 0.85}},
}
REPORT["gain"] = {name: {k: v - curve[1] for k, v in curve.items()}
                  for name, curve in REPORT["curves"].items()}


def test_crossed_names_each_attack_at_or_above_the_alert_level() -> None:
    gain = {"identity": {1: 0.0, 4: 0.05}, "identity_set": {1: 0.0, 8: 0.31},
            "linkage_auc": {1: 0.0, 2: 0.1}, "location": {}}
    assert crossed(gain, 0.1) == {"identity_set": 0.31, "linkage_auc": 0.1}
    assert crossed(gain, 0.32) == {}


# -- the release epsilon of the fleet ------------------------------------------------------


def test_release_epsilon_counts_only_randomized_releases(registry_url, tmp_path) -> None:
    """Training releases on the same ledger do not count; a device's releases over two
    rounds compose to the Gaussian over every slot (dp-accounting)."""
    a, b, c = fleet(registry_url, tmp_path, [None, None, None])
    release = ReleaseBudget(RELEASE, M, registry_url, "run-r", DELTA, default_cap=None)
    ledger.reserve(registry_url, "run-r", 1, [ledger.Release(a, LOCAL),
                                              ledger.Release(b, LOCAL)], DELTA, None)
    assert release.reserve(1, [a]) == {}
    assert release.reserve(2, [a, b]) == {}
    with db.session_scope(registry_url) as session:
        spent = ledger.kind_epsilons(session, KIND, DELTA, [a, b, c])
    two, one = (gaussian_epsilon(RELEASE.noise_multiplier, n * M, DELTA) for n in (2, 1))
    assert two <= spent[a] <= two * 1.005
    assert one <= spent[b] <= one * 1.005
    assert spent[c] == 0.0
    # The cached vector (every kind) is more than the release alone for `a`.
    assert ledger.budget_state(registry_url, a, DELTA).epsilon > spent[a] * 1.01
    fleet_figures = release.fleet([a, b, c])
    assert fleet_figures == ReleaseEpsilon(spent[a], (spent[a] + spent[b]) / 3, DELTA, 3)


def test_devices_released_alike_share_one_pld_computation(registry_url, tmp_path) -> None:
    """A fleet collected alike has one composition: the cost does not grow with devices."""
    ids = fleet(registry_url, tmp_path, [None] * 12)
    ReleaseBudget(RELEASE, M, registry_url, "run-r", 1e-6, None).reserve(1, ids)
    before = ledger._reported.cache_info().misses
    with db.session_scope(registry_url) as session:
        figures = fleet_release(session, ids, 1e-6)
    assert ledger._reported.cache_info().misses - before <= 1
    exact = gaussian_epsilon(RELEASE.noise_multiplier, M, 1e-6)
    assert exact <= figures.max <= exact * 1.005
    assert figures.mean == pytest.approx(figures.max) and figures.devices == 12


# -- the collection's figures and saved report ---------------------------------------------


def _track(url: str, tmp_path, monkeypatch, alert: float = 0.1, round_: int = 2):
    """`Collector._track` on a registry, with the tracker's curves fixed to REPORT."""
    db.upgrade(url)
    cfg = RunConfig(run_id="run-l", runs_dir=str(tmp_path / "runs"), leakage_alert=alert)
    tracked = Tracked(copy.deepcopy(REPORT), "", 4, 64)
    monkeypatch.setattr(collection_module, "observed_uploads", lambda rows, index_of: None)
    monkeypatch.setattr(collection_module, "track_uploads", lambda *args: tracked)
    return Collector(cfg, url)._track(None, "e" * 64, Attacker(None, None, 0.0), round_)


def test_the_collection_records_which_attacks_crossed(registry_url, tmp_path,
                                                      monkeypatch) -> None:
    figures = _track(registry_url, tmp_path, monkeypatch)
    above = {"alert": 0.1, "attacks": {"identity_set": pytest.approx(0.31),
                                       "linkage_auc": pytest.approx(0.3)}}
    assert figures["leakage_flagged"] and figures["leakage_crossed"] == above
    with db.session_scope(registry_url) as session:
        saved = json.loads(session.query(LeakageReport).one().report)
    assert saved["crossed"] == above
    run_file = json.loads((tmp_path / "runs" / "run-l" / LEAKAGE_FILE).read_text())
    assert run_file[-1]["report"]["crossed"] == above
    # The record carries it typed, through history.json.
    record = RoundRecord.from_json(round_record(2, **figures).to_json())
    assert record.leakage_crossed == LeakageCrossed(0.1, {"identity_set": pytest.approx(0.31),
                                                          "linkage_auc": pytest.approx(0.3)})
    assert record.linkage_auc == (8, 0.85)


def test_an_unflagged_collection_records_its_alert_level_and_no_attack(
        registry_url, tmp_path, monkeypatch) -> None:
    figures = _track(registry_url, tmp_path, monkeypatch, alert=0.5)
    assert not figures["leakage_flagged"]
    assert figures["leakage_crossed"] == {"alert": 0.5, "attacks": {}}


# -- the console line ----------------------------------------------------------------------


def _line(record: RoundRecord) -> str:
    console = Console(record=True, width=400)
    _print_round(console, record, 5)
    return console.export_text()


def test_the_round_line_names_the_attack_that_crossed_and_the_release_epsilon() -> None:
    plain = _line(round_record(3))
    assert "leakage" not in plain and "release" not in plain
    record = round_record(
        3, leakage_crossed={"alert": 0.1, "attacks": {"identity_set": 0.31}},
        release_epsilon={"max": 2.5, "mean": 1.25, "delta": DELTA, "devices": 4})
    line = _line(record)
    assert " leakage: identity_set +0.31 >= 0.10" in line
    assert "release eps max 2.5 (delta=1e-05)" in line
    quiet = _line(round_record(3, leakage_crossed={"alert": 0.1, "attacks": {}}))
    assert "leakage" not in quiet


# -- metrics and the dashboard -------------------------------------------------------------


def test_the_observer_exports_linkage_auc_alert_and_release_epsilon(tmp_path) -> None:
    observer = MetricsObserver()
    m = observer.metrics
    assert math.isnan(value(m, "fedmsr_leakage_linkage_auc_ratio"))  # not measured yet
    assert math.isnan(value(m, "fedmsr_leakage_alert_ratio"))
    assert value(m, "fedmsr_fleet_release_epsilon_max") == 0.0
    observer.run_started(fake_cfg(tmp_path, leakage_alert=0.2), 0)
    assert value(m, "fedmsr_leakage_alert_ratio") == 0.2
    observer.round_finished(None, round_record(
        1, leakage={"identity_set": {"1": 0.3, "8": 0.61},
                    "linkage_auc": {"1": 0.55, "16": 0.9, "4": 0.7}},
        leakage_crossed={"alert": 0.1, "attacks": {"identity_set": 0.31}},
        release_epsilon={"max": 2.5, "mean": 1.25, "delta": DELTA, "devices": 4}))
    assert value(m, "fedmsr_leakage_linkage_auc_ratio") == 0.9  # the largest k, not the last
    assert value(m, "fedmsr_leakage_alert_ratio") == 0.1
    assert value(m, "fedmsr_fleet_release_epsilon_max") == 2.5
    assert value(m, "fedmsr_fleet_release_epsilon_mean") == 1.25
    assert value(m, "fedmsr_leakage_accumulation_gain_ratio",
                 attack="identity_set") == pytest.approx(0.31)
    observer.round_finished(None, round_record(2))  # no collection: the gauges keep theirs
    assert value(m, "fedmsr_fleet_release_epsilon_max") == 2.5


def test_release_epsilon_metrics_refuse_what_no_ledger_holds() -> None:
    m = FedmsrMetrics()
    with pytest.raises(ValueError, match="release epsilon max"):
        m.set_release_epsilon(math.inf, 1.0)
    with pytest.raises(ValueError, match="linkage AUC"):
        m.set_linkage_auc(1.5)


def test_the_leakage_dashboard_draws_the_alert_level_with_the_gains() -> None:
    board = json.loads((dashboards.OUTPUT_DIR / "fedmsr-leakage.json").read_text())
    panels = {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in board["panels"]}
    selected = '{job=~"$job", run=~"$run"}'
    assert panels["Accumulation gain"] == [f"fedmsr_leakage_accumulation_gain_ratio{selected}",
                                           f"fedmsr_leakage_alert_ratio{selected}"]
    assert panels["Linkage AUC"] == [f"fedmsr_leakage_linkage_auc_ratio{selected}"]
    assert panels["Randomized-release ε"] == [
        f"fedmsr_fleet_release_epsilon_max{selected}",
        f"fedmsr_fleet_release_epsilon_mean{selected}",
        f"fedmsr_registry_release_epsilon_max{selected}",
        f"fedmsr_registry_release_epsilon_mean{selected}"]


# -- fedmsr leakage show -------------------------------------------------------------------


def _show(url: str, monkeypatch, capsys, *args: str) -> dict:
    monkeypatch.setenv("FEDMSR_DB", url)
    assert main(["leakage", "show", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_leakage_show_marks_crossed_attacks_and_release_epsilon(
        registry_url, tmp_path, monkeypatch, capsys) -> None:
    a, b = fleet(registry_url, tmp_path, [None, None])
    _track(registry_url, tmp_path, monkeypatch)
    ReleaseBudget(RELEASE, M, registry_url, "run-l", DELTA, None).reserve(1, [a])
    view = _show(registry_url, monkeypatch, capsys, "--delta", str(DELTA))
    report = view["report"]
    assert report["crossed"] == ["identity_set", "linkage_auc"] and report["alert"] == 0.1
    assert report["linkage_auc"] == {"k": 8, "auc": 0.85}
    assert report["max_gain_by_attack"]["routine"] == pytest.approx(0.05)
    exact = gaussian_epsilon(RELEASE.noise_multiplier, M, DELTA)
    epsilons = {d["name"]: d["release_epsilon"] for d in view["devices"]}
    assert exact <= epsilons["cam-0"] <= exact * 1.005 and epsilons["cam-1"] == 0.0
    assert view["release_epsilon_max"] == epsilons["cam-0"]
    one = _show(registry_url, monkeypatch, capsys, "cam-0", "--delta", str(DELTA))
    assert one["release_epsilon"] == epsilons["cam-0"] and one["release_delta"] == DELTA
    # the text views say the same
    assert main(["leakage", "show"]) == 0
    text = capsys.readouterr().out
    assert "CROSSED" in text and "crossed by identity_set, linkage_auc" in text
    assert "linkage AUC: 0.850 at k=8" in text and "fleet max release epsilon" in text
    assert main(["leakage", "show", "cam-0"]) == 0
    assert "randomized-release epsilon" in capsys.readouterr().out
    assert main(["leakage", "show", "--delta", "2"]) == 2


def test_leakage_show_says_when_the_newest_collection_was_unlinkable(
        registry_url, tmp_path, monkeypatch, capsys) -> None:
    fleet(registry_url, tmp_path, [None])
    _track(registry_url, tmp_path, monkeypatch)
    with db.session_scope(registry_url) as session:
        UnlinkableStore().add(session, [NewUnlinkable("run-u", 3, "ab" * 16, None, 0,
                                                      encode_payload(np.zeros(4)), "e" * 64)])
    view = _show(registry_url, monkeypatch, capsys)
    assert view["report"]["unlinkable"] and view["report"]["round"] == 3
    assert view["report"]["previous"]["run_id"] == "run-l"
    assert main(["leakage", "show"]) == 0
    assert "an unlinkable collection" in capsys.readouterr().out
    # scoped to the run that has a curve, the curve is current
    assert not _show(registry_url, monkeypatch, capsys, "--run", "run-l")["report"]["unlinkable"]
    assert _show(registry_url, monkeypatch, capsys, "--run", "run-u")["report"]["unlinkable"]


def test_fedmsr_monitor_reads_release_epsilon_from_the_registry_and_runs(
        registry_url, tmp_path) -> None:
    """Between runs: the registry's release epsilon (devices not revoked, delta 1e-5), and
    the latest run's alert level and newest linkage AUC from its files."""
    from fl_server.persisted_metrics import registry_snapshot
    from monitoring.persisted import RunOnDisk, apply_runs

    a, b = fleet(registry_url, tmp_path, [None, None])
    ReleaseBudget(RELEASE, M, registry_url, "run-r", 1e-5, None).reserve(1, [a])
    snapshot = registry_snapshot(registry_url)
    assert snapshot is not None and snapshot.release_epsilons is not None
    exact = gaussian_epsilon(RELEASE.noise_multiplier, M, 1e-5)
    assert sorted(snapshot.release_epsilons) == [0.0, pytest.approx(exact, rel=0.005)]
    m = FedmsrMetrics(between_runs=True)
    history = [round_record(1, leakage={"linkage_auc": {"1": 0.5, "8": 0.8}}), round_record(2)]
    apply_runs(m, [RunOnDisk("r", {"leakage_alert": 0.2}, {"status": "completed"}, history)])
    assert value(m, "fedmsr_leakage_alert_ratio") == 0.2
    assert value(m, "fedmsr_leakage_linkage_auc_ratio") == 0.8
    snapshot.apply(m)
    # the registry's whole fleet, under its own names (a run's devices keep theirs)
    assert value(m, "fedmsr_registry_release_epsilon_max") == max(snapshot.release_epsilons)
    assert value(m, "fedmsr_registry_release_epsilon_mean") == pytest.approx(
        sum(snapshot.release_epsilons) / 2)
    assert value(m, "fedmsr_fleet_release_epsilon_max") == 0.0  # no run collected one
    with pytest.raises(ValueError, match="between_runs"):
        snapshot.apply(FedmsrMetrics())
