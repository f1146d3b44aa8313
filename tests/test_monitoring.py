"""Monitoring without a live run: metric definitions, the observer, the exporter, the
generated dashboards, the Prometheus config and rules, and `fedmsr monitor`.

The end-to-end check against a real Prometheus scraping a live run is in
`test_monitoring_live.py`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fl_server.config import ConfigError, RunConfig
from monitoring import dashboards
from monitoring.exporter import MetricsExporter
from monitoring.metrics import FedmsrMetrics
from monitoring.observer import ENDPOINT_FILE, TARGETS_DIR, MetricsObserver
from privacy.accounting.fleet import FleetBudgets, summarise
from privacy.wire.round_record import RoundRecord
from tests.helpers import EXIT_WAIT_S, FEDMSR, fedmsr

MONITORING = Path(__file__).resolve().parents[1] / "monitoring"
PROMETHEUS_DIR = MONITORING / "prometheus"
REQUIRED_ALERTS = {"FedmsrBudgetNearExhaustion", "FedmsrDevicesBudgetExhausted",
                   "FedmsrLeakageGainHigh", "FedmsrRoundsFailed", "FedmsrDropoutSpike",
                   "FedmsrLedgerDisagreement"}
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_gcount", "_gsum")


def promtool() -> str:
    """promtool from Debian's `prometheus` (CI installs it; elsewhere the test skips)."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run must install Debian's prometheus")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def samples(metrics: FedmsrMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every exposed sample as {(name, sorted labels): value}, parsed from the text format."""
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: FedmsrMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


def record(round_: int, **overrides: object) -> RoundRecord:
    """A round record as history.json holds it (`privacy.wire.round_record`)."""
    base = {
        "round": round_, "loss": 2.1, "kl_bits": 4.0, "utility_acc": 0.6, "identity_acc": 0.7,
        "utility_chance": 0.3, "identity_chance": 0.5, "train_loss": 2.0,
        "train_kl_bits": 3.0, "device_kl_bits": None, "device_activity_acc": None,
        "sampled": 3, "responded": 2, "failed": 1, "devices": [0, 2],
        "dp_events": [{"device": 0, "sample_rate": 0.25, "noise_multiplier": 1.0, "steps": 4},
                      {"device": 2, "sample_rate": 0.5, "noise_multiplier": 2.0, "steps": 2}],
        "checkin_s": 0.2, "train_phase_s": 3.0, "aggregate_s": 0.01,
        "client_train_s_sum": 4.5, "client_train_s_max": 2.5, "eval_s": 1.5, "wall_s": 5.0,
    }
    return RoundRecord.from_json({**base, **overrides})


def assert_port_closed(port: int) -> None:
    """Nothing listens on the port any more, and it can be bound again (no leaked socket).

    SO_REUSEADDR only lets the bind past TIME_WAIT remnants of served requests; Linux
    still refuses it while a listening socket holds the port.
    """
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def fake_cfg(tmp_path: Path, **overrides: object) -> SimpleNamespace:
    """A run configuration whose run directory is `tmp_path/runs/r1` (made here)."""
    values = {"devices": 3, "rounds": 3, "dp_sgd": True, "metrics_port": -1,
              "metrics_linger_s": 0.0, **overrides}
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(**values, run_dir=lambda: run_dir)


# -- metric definitions ----------------------------------------------------------------


def test_names_follow_prometheus_conventions_and_have_no_device_labels() -> None:
    metrics = FedmsrMetrics()
    families = list(metrics.registry.collect())
    assert len(families) >= 40
    for family in families:
        assert family.name.startswith("fedmsr_"), family.name
        for sample in family.samples:
            assert not {"device", "device_id", "node", "node_id"} & set(sample.labels), sample


def test_two_metric_sets_do_not_clash() -> None:
    first, second = FedmsrMetrics(), FedmsrMetrics()
    first.rounds.labels(status="completed").inc()
    assert value(first, "fedmsr_rounds_total", status="completed") == 1
    assert value(second, "fedmsr_rounds_total", status="completed") == 0


def test_fleet_budget_figures_match_an_independent_count() -> None:
    metrics = FedmsrMetrics()
    eps = [0.5, 0.95, 1.0, 2.0, 0.1, 0.3]     # reported (PLD)
    bounds = [0.6, 1.1, 1.2, 2.5, 0.2, 0.35]  # the RDP bound is >= the reported spend
    caps = [1.0, 1.0, 1.0, 1.0, 1.0, 0.3]
    metrics.set_budgets(summarise(bounds, caps, eps.__getitem__))
    # by hand, on the spend: exhausted = eps >= cap -> 1.0, 2.0, 0.3; near cap -> 0.95
    # (on the bound it would be 1.1, 1.2, 2.5, 0.35 exhausted and 0.6 not near)
    assert value(metrics, "fedmsr_devices_budget_exhausted") == 3
    assert value(metrics, "fedmsr_devices_near_budget_cap") == 1
    assert value(metrics, "fedmsr_fleet_epsilon_spent_max") == 2.0
    assert value(metrics, "fedmsr_fleet_epsilon_rdp_bound_max") == 2.5
    ordered = sorted(bounds)  # p95 by linear interpolation between order statistics
    position = 0.95 * (len(ordered) - 1)
    lower = ordered[int(position)]
    p95 = lower + (position - int(position)) * (ordered[int(position) + 1] - lower)
    assert value(metrics, "fedmsr_fleet_epsilon_rdp_bound_p95") == pytest.approx(p95)
    assert value(metrics, "fedmsr_budget_tracked_devices") == 6
    bucket = "fedmsr_device_epsilon_rdp_bound_bucket"
    assert value(metrics, bucket, le="0.5") == 2  # 0.2, 0.35
    assert value(metrics, bucket, le="1.0") == 3
    assert value(metrics, bucket, le="+Inf") == 6
    assert value(metrics, "fedmsr_device_epsilon_rdp_bound_gsum") == pytest.approx(sum(bounds))
    metrics.set_budgets(summarise([0.3], [1.0], [0.2].__getitem__))  # replaces the last whole
    assert value(metrics, bucket, le="+Inf") == 1
    assert value(metrics, "fedmsr_devices_budget_exhausted") == 0
    assert value(metrics, "fedmsr_fleet_epsilon_spent_max") == 0.2
    with pytest.raises(ValueError, match="caps"):
        FleetBudgets([1.0, 2.0], [1.0])


@pytest.mark.parametrize("seed", range(20))
def test_the_reported_figures_come_from_the_devices_that_decide_them(seed: int) -> None:
    """summarise asks for few reported (PLD) figures, yet agrees with asking for all."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 300))
    eps = rng.gamma(2.0, 1.0, n) * rng.choice([0.0, 1.0], n, p=[0.1, 0.9])  # some never charged
    bounds = eps * rng.uniform(1.0, 1.2, n)  # RDP: 0-20% looser
    caps = rng.choice([1.0, 2.0, 4.0, np.inf], n)
    asked: list[int] = []
    figures = summarise(bounds, caps, lambda i: asked.append(i) or float(eps[i]))
    assert len(asked) == len(set(asked)) == figures.reported_devices  # each at most once
    assert figures.epsilon_spent_max == (float(eps.max()) if n else 0.0)
    assert figures.exhausted == int(np.sum(eps >= caps))
    assert figures.near_cap == int(np.sum((eps < caps) & (eps >= 0.9 * caps)))
    if n >= 100:  # a fleet's worth: most devices' reported figures are never needed
        assert figures.reported_devices < n / 2


def test_information_bits_are_exported_as_bytes() -> None:
    metrics = FedmsrMetrics()
    metrics.set_information_bits([8.0, 64.0, 4096.0])
    assert value(metrics, "fedmsr_device_information_bytes_gsum") == (8 + 64 + 4096) / 8
    assert value(metrics, "fedmsr_device_information_bytes_bucket", le="2.0") == 1  # 16 bits
    assert value(metrics, "fedmsr_device_information_bytes_bucket", le="+Inf") == 3


def test_leakage_gain_is_the_rise_over_a_single_representation() -> None:
    metrics = FedmsrMetrics()
    metrics.set_leakage("identity", {1: 0.5, 2: 0.55, 4: 0.72, 8: 0.7})
    assert value(metrics, "fedmsr_leakage_accumulation_gain_ratio",
                 attack="identity") == pytest.approx(0.22)
    assert value(metrics, "fedmsr_leakage_max_k", attack="identity") == 8
    assert value(metrics, "fedmsr_leakage_attack_accuracy_ratio", attack="identity", k="4") == 0.72
    with pytest.raises(ValueError, match="PL\\(1\\)"):
        metrics.set_leakage("identity", {2: 0.5})


# -- the observer ----------------------------------------------------------------------


def test_observer_turns_round_records_into_metrics(tmp_path) -> None:
    observer = MetricsObserver()
    cfg = fake_cfg(tmp_path)
    observer.run_started(cfg, 0)
    first, second = record(1), record(2, utility_acc=0.65, sampled=3, responded=3, failed=0,
                                      devices=[0, 1, 2], dp_events=[])
    observer.round_finished(cfg, first)
    observer.round_finished(cfg, second)
    m = observer.metrics
    assert value(m, "fedmsr_rounds_total", status="completed") == 2
    assert value(m, "fedmsr_run_rounds_completed") == 2
    assert value(m, "fedmsr_probe_accuracy_ratio", probe="utility") == 0.65
    assert value(m, "fedmsr_probe_chance_accuracy_ratio", probe="identity") == 0.5
    assert value(m, "fedmsr_representation_kl_bytes") == 4.0 / 8
    assert value(m, "fedmsr_devices_sampled_total") == 6
    assert value(m, "fedmsr_devices_dropped_total") == 1
    assert value(m, "fedmsr_round_devices", outcome="responded") == 3
    assert value(m, "fedmsr_client_train_seconds_total") == 9.0
    assert value(m, "fedmsr_round_phase_duration_seconds_count", phase="train") == 2
    assert value(m, "fedmsr_round_phase_duration_seconds_sum", phase="evaluate") == 3.0
    assert value(m, "fedmsr_round_phase_duration_seconds_count", phase="secagg_unmask") == 0
    assert value(m, "fedmsr_dp_events_total") == 2
    assert value(m, "fedmsr_dp_noise_multiplier_sum") == 3.0
    assert value(m, "fedmsr_dp_sampling_ratio_bucket", le="0.25") == 1
    assert value(m, "fedmsr_leakage_attack_accuracy_ratio", attack="identity", k="1") == 0.7
    assert value(m, "fedmsr_leakage_accumulation_gain_ratio", attack="identity") == 0
    # devices 0, 1, 2 all took part: active 3, none left merely enrolled
    assert value(m, "fedmsr_devices", status="active") == 3
    assert value(m, "fedmsr_devices", status="enrolled") == 0
    assert value(m, "fedmsr_run_status", status="running") == 1
    observer.run_finished(cfg, SimpleNamespace(status="completed", completed_rounds=2,
                                               planned_rounds=3))
    assert value(m, "fedmsr_run_status", status="completed") == 1
    assert value(m, "fedmsr_run_status", status="running") == 0


def test_observer_counts_the_round_a_failed_run_was_in(tmp_path) -> None:
    observer = MetricsObserver()
    cfg = fake_cfg(tmp_path)
    observer.run_started(cfg, 1)
    observer.run_finished(cfg, SimpleNamespace(status="failed", completed_rounds=1,
                                               planned_rounds=3))
    assert value(observer.metrics, "fedmsr_rounds_total", status="failed") == 1
    assert value(observer.metrics, "fedmsr_run_status", status="failed") == 1


def test_observer_reads_keys_later_parts_will_add(tmp_path) -> None:
    observer = MetricsObserver()
    cfg = fake_cfg(tmp_path)
    observer.run_started(cfg, 0)
    observer.round_finished(cfg, record(1, bytes_sent=1000, bytes_received=400,
                                        rejected={"norm_bound": 2}, secagg_dropouts=1,
                                        ledger_disagreements=1,
                                        secagg_phases_s={"unmask": 0.5},
                                        leakage={"identity": {"1": 0.6, "4": 0.8}}))
    m = observer.metrics
    assert value(m, "fedmsr_network_sent_bytes_total") == 1000
    assert value(m, "fedmsr_updates_rejected_total", reason="norm_bound") == 2
    assert value(m, "fedmsr_secagg_dropouts_total") == 1
    assert value(m, "fedmsr_ledger_disagreements_total") == 1
    assert value(m, "fedmsr_round_phase_duration_seconds_sum", phase="secagg_unmask") == 0.5
    assert value(m, "fedmsr_leakage_accumulation_gain_ratio",
                 attack="identity") == pytest.approx(0.2)


def test_observer_serves_while_the_run_lives_then_stops(tmp_path) -> None:
    threads_before = threading.active_count()
    observer = MetricsObserver.for_config(fake_cfg(tmp_path, metrics_port=0))
    cfg = fake_cfg(tmp_path, metrics_port=0)
    observer.run_started(cfg, 0)
    endpoint = json.loads((cfg.run_dir() / ENDPOINT_FILE).read_text())
    assert endpoint["url"] == f"http://127.0.0.1:{endpoint['port']}/metrics"
    # Prometheus' file-based discovery finds the run on whatever port it got
    target_file = tmp_path / "runs" / TARGETS_DIR / "r1.json"
    assert json.loads(target_file.read_text()) == [
        {"targets": [f"127.0.0.1:{endpoint['port']}"],
         "labels": {"job": "fedmsr-run", "run": "r1"}}]
    observer.round_finished(cfg, record(1))
    page = urllib.request.urlopen(endpoint["url"], timeout=10).read().decode()
    assert 'fedmsr_rounds_total{status="completed"} 1.0' in page
    observer.run_finished(cfg, SimpleNamespace(status="completed", completed_rounds=1,
                                               planned_rounds=1))
    assert not (cfg.run_dir() / ENDPOINT_FILE).exists()
    assert not target_file.exists()  # Prometheus drops the target with the exporter
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(endpoint["url"], timeout=5)
    assert threading.active_count() == threads_before


def test_observer_names_the_option_when_the_port_is_taken(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        observer = MetricsObserver.for_config(fake_cfg(tmp_path, metrics_port=port))
        with pytest.raises(RuntimeError, match="metrics_port.*--metrics-port"):
            observer.run_started(fake_cfg(tmp_path, metrics_port=port), 0)
    assert not (tmp_path / "runs" / "r1" / ENDPOINT_FILE).exists()
    assert not (tmp_path / "runs" / TARGETS_DIR).exists()


# -- the exporter ----------------------------------------------------------------------


def test_exporter_binds_loopback_and_stops_cleanly() -> None:
    metrics = FedmsrMetrics()
    threads_before = threading.active_count()
    exporter = MetricsExporter(metrics.registry, 0)
    port = exporter.start()
    assert port > 0 and exporter.url == f"http://127.0.0.1:{port}/metrics"
    assert exporter._server.server_address[0] == "127.0.0.1"
    assert "fedmsr_run_status" in urllib.request.urlopen(exporter.url, timeout=10).read().decode()
    exporter.stop()
    exporter.stop()  # idempotent
    assert threading.active_count() == threads_before
    assert_port_closed(port)


@pytest.mark.parametrize("port", [-1, 65536, True, "9464"])
def test_exporter_refuses_bad_ports(port) -> None:
    with pytest.raises(ValueError, match="metrics port"):
        MetricsExporter(FedmsrMetrics().registry, port)


def test_scraped_page_passes_promtool(tmp_path) -> None:
    observer = MetricsObserver()
    cfg = fake_cfg(tmp_path)
    observer.run_started(cfg, 0)
    observer.round_finished(cfg, record(1))
    observer.metrics.set_budgets(summarise([0.6, 1.3], [1.0, 1.0], [0.5, 1.2].__getitem__))
    observer.metrics.set_information_bits([100.0])
    page = generate_latest(observer.metrics.registry)
    result = subprocess.run([promtool(), "check", "metrics"], input=page, capture_output=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


# -- run configuration and CLI ---------------------------------------------------------


@pytest.mark.parametrize(("field", "bad"), [("metrics_port", -2), ("metrics_port", 65536),
                                             ("metrics_port", True), ("metrics_linger_s", -1.0)])
def test_config_refuses_bad_metrics_settings(field: str, bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(**{field: bad}).validate()
    assert info.value.field_name == field


def test_config_accepts_metrics_settings_from_flwr_run_config() -> None:
    cfg = RunConfig.from_user_config({"metrics-port": 9464, "metrics-linger-s": 5})
    assert (cfg.metrics_port, cfg.metrics_linger_s) == (9464, 5.0)


@pytest.mark.parametrize(("args", "needle"), [
    (["--metrics-port", "70000"], "--metrics-port: must be -1 (off)"),
    (["--metrics-linger-s", "-1"], "--metrics-linger-s: must be between 0 and 86400"),
    (["--resume", "x", "--metrics-port", "9464"], "--metrics-port"),
])
def test_run_refuses_bad_metrics_options(tmp_path, args: list[str], needle: str) -> None:
    result = fedmsr("run", "--runs-dir", str(tmp_path / "runs"), *args, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())


# -- dashboards, Prometheus config and rules -------------------------------------------


def test_committed_dashboards_are_what_the_generator_writes() -> None:
    expected = dashboards.expected_files()
    committed = {p.name for p in dashboards.OUTPUT_DIR.glob("*.json")}
    assert committed == set(expected)
    for name, text in expected.items():
        assert (dashboards.OUTPUT_DIR / name).read_text() == text, (
            f"{name} is stale: run `python -m monitoring.dashboards`")
    assert dashboards.expected_files() == expected  # deterministic


def _exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _metric_names(expr: str) -> set[str]:
    names = set()
    for name in re.findall(r"\bfedmsr_[a-z0-9_]+", expr):
        for suffix in SUFFIXES:
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
                break
        names.add(name)
    return names


def test_dashboards_cover_the_issue_and_query_only_defined_metrics() -> None:
    defined = FedmsrMetrics(between_runs=True).metric_names()
    titles = set()
    for path in sorted(dashboards.OUTPUT_DIR.glob("*.json")):
        board = json.loads(path.read_text())
        titles.add(board["title"])
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert set(variables) == {"job", "run"}, path.name
        assert variables["run"]["allValue"] == ".*" and variables["run"]["multi"]
        assert not variables["job"]["includeAll"]  # one job at a time: never both figures
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "fedmsr-prometheus"
            assert panel["targets"], panel["title"]
        for expr in _exprs(board):
            assert _metric_names(expr) <= defined, expr
            assert "device" not in re.findall(r"(\w+)\s*=~?", expr)
            # every metric in every query is selected by the job and run variables
            for selector in re.findall(r"\bfedmsr_[a-z0-9_]+(\{[^}]*\})?", expr):
                assert selector.startswith('{job=~"$job", run=~"$run"'), expr
            assert re.search(r"\bfedmsr_[a-z0-9_]+(?![a-z0-9_{])", expr) is None, expr
    assert titles == {"fedmsr / Federation overview", "fedmsr / Privacy budgets",
                      "fedmsr / Leakage", "fedmsr / Secure aggregation & devices"}


def test_alert_rules_cover_the_issue_and_use_defined_metrics() -> None:
    defined = FedmsrMetrics().metric_names()
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == REQUIRED_ALERTS
    for expr in alerts.values():
        assert _metric_names(expr) and _metric_names(expr) <= defined, expr


def test_the_leakage_alert_rule_fires_where_a_run_flags_by_default() -> None:
    """The Prometheus alert and `fedmsr run --leakage-alert`'s default name one threshold."""
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    expr = next(r["expr"] for g in rules["groups"] for r in g["rules"]
                if r["alert"] == "FedmsrLeakageGainHigh")
    match = re.fullmatch(r"fedmsr_leakage_accumulation_gain_ratio >= ([0-9.]+)", expr)
    assert match, expr
    assert float(match.group(1)) == RunConfig().leakage_alert


def test_promtool_accepts_the_config_and_the_rules() -> None:
    tool = promtool()
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "rules.yml"]):
        result = subprocess.run([tool, *args], cwd=PROMETHEUS_DIR, capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_points_grafana_at_the_dashboards_and_datasource() -> None:
    grafana = MONITORING / "grafana" / "provisioning"
    source = yaml.safe_load((grafana / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["uid"] == dashboards.DATASOURCE.uid
    provider = yaml.safe_load((grafana / "dashboards" / "fedmsr.yml").read_text())
    compose = yaml.safe_load((MONITORING / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts


# -- fedmsr monitor ----------------------------------------------------------------------


def _write_run(runs: Path, run_id: str, status: str, rounds: list[RoundRecord],
               updated: float) -> None:
    run_dir = runs / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"run_id": run_id, "devices": 4,
                                                  "dp_sgd": False, "rounds": 3}))
    (run_dir / "status.json").write_text(json.dumps({
        "status": status, "planned_rounds": 3, "completed_rounds": len(rounds), "reason": "",
        "updated_unix": updated}))
    (run_dir / "history.json").write_text(json.dumps([r.to_json() for r in rounds]))


def _monitor_page(runs: Path) -> dict:
    result = fedmsr("monitor", "--runs-dir", str(runs), "--once", timeout=60, cwd=runs)
    assert result.returncode == 0, result.stderr
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(result.stdout) for s in f.samples}


def test_monitor_reports_the_runs_directory(tmp_path) -> None:
    runs = tmp_path / "runs"
    _write_run(runs, "old", "failed", [record(1)], updated=100.0)
    _write_run(runs, "new", "completed",
               [record(1), record(2, utility_acc=0.8, devices=[0, 1])], updated=200.0)
    (runs / "broken").mkdir()  # no run.json: skipped, not fatal
    page = _monitor_page(runs)
    assert page[("fedmsr_runs", (("status", "completed"),))] == 1
    assert page[("fedmsr_runs", (("status", "failed"),))] == 1
    assert page[("fedmsr_run_status", (("status", "completed"),))] == 1  # the newest run
    assert page[("fedmsr_probe_accuracy_ratio", (("probe", "utility"),))] == 0.8
    assert page[("fedmsr_run_rounds_completed", ())] == 2
    # the files do not say when a run started: no start time rather than a 0 (1970)
    assert ("fedmsr_run_start_time_seconds", ()) not in page
    assert page[("fedmsr_last_round_end_time_seconds", ())] == 200.0
    # 4 devices; rounds took part with {0, 2} and {0, 1}: 3 active, 1 never took part
    assert page[("fedmsr_devices", (("status", "active"),))] == 3
    assert page[("fedmsr_devices", (("status", "enrolled"),))] == 1
    assert page[("fedmsr_monitor_source_up", (("source", "registry"),))] == 0


@pytest.mark.parametrize(("args", "needle"), [(["--port", "70000"], "--port"),
                                              (["--runs-dir", "nowhere"], "--runs-dir")])
def test_monitor_refuses_bad_input(tmp_path, args: list[str], needle: str) -> None:
    result = fedmsr("monitor", *args, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


@pytest.mark.parametrize(("stop", "inherited"), [(signal.SIGINT, signal.SIG_IGN),
                                                  (signal.SIGTERM, signal.SIG_DFL)],
                         ids=["sigint-inherited-ignored", "sigterm"])
def test_monitor_serves_until_interrupted(tmp_path, stop, inherited) -> None:
    """It serves until SIGINT or SIGTERM, then exits 0 and frees its port; SIGINT stops it
    even when it was started with SIGINT ignored (as a background job of a script is)."""
    runs = tmp_path / "runs"
    _write_run(runs, "only", "completed", [record(1)], updated=1.0)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.Popen([*FEDMSR, "monitor", "--runs-dir", str(runs), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, inherited))
    try:
        line = proc.stdout.readline()  # blocks until the server is listening (or exits)
        match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert match, line + proc.stderr.read()
        url = match.group(0)
        page = urllib.request.urlopen(url, timeout=EXIT_WAIT_S).read().decode()
        assert 'fedmsr_runs{status="completed"} 1.0' in page
        _write_run(runs, "later", "failed", [], updated=2.0)  # each scrape re-reads
        page = urllib.request.urlopen(url, timeout=EXIT_WAIT_S).read().decode()
        assert 'fedmsr_runs{status="failed"} 1.0' in page
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=EXIT_WAIT_S)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_port_closed(int(match.group(1)))


def test_monitor_without_registry_reads_nothing_from_it(tmp_path, monkeypatch) -> None:
    from fl_server.persisted_metrics import registry_snapshot

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDMSR_DB", raising=False)
    assert registry_snapshot(None) is None


def test_dashboard_generator_check_mode() -> None:
    result = subprocess.run([sys.executable, "-m", "monitoring.dashboards", "--check"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
