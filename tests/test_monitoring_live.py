"""The dashboards and alerts against a real Prometheus scraping a live simulated run.

A 3-device x 2-round DP-SGD run with secure aggregation (3: a device's smallest cohort)
serves its metrics on any free port (`--metrics-port 0`); a Prometheus started here on
127.0.0.1, with the committed scrape config (its file-based discovery pointed at this
runs directory, nothing else changed) and the committed alert rules, finds the run through
the target file the run writes and scrapes it every second. Once
Prometheus has seen the run complete and evaluated its rules, every dashboard panel
query must return data and every alert expression must evaluate without error; a few
values are checked against the run's own history.json. Both processes are stopped by
PID in `finally`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from fl_server.launcher import group_members
from monitoring import dashboards
from monitoring.metrics import PHASES
from monitoring.observer import TARGETS_DIR
from tests.helpers import FEDMSR, SMALL, wait_for
from tests.test_monitoring import _metric_names

pytestmark = pytest.mark.slow
PROMETHEUS_DIR = Path(__file__).resolve().parents[1] / "monitoring" / "prometheus"
#: Grafana's `$__rate_interval` stands for at least four scrape intervals; a window that
#: covers the whole short run is the closest instant-query equivalent.
RATE_WINDOW = "5m"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: .ci/run must install Debian's prometheus")
        pytest.skip(f"{name} not installed (apt-get install prometheus)")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _api(base: str, path: str, **params: str) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 400 for a bad query: return its error body
        return json.loads(exc.read())


def _query(base: str, expr: str, job: str = "fedmsr-run", run: str = "live") -> dict:
    """`expr` evaluated now, Grafana's variables substituted (a dashboard's job and run
    selection, and the rate window)."""
    for variable, value in (("$__rate_interval", RATE_WINDOW), ("$job", job), ("$run", run)):
        expr = expr.replace(variable, value)
    return _api(base, "/api/v1/query", query=expr)


def _poll(condition, what: str, timeout_s: float, *procs: subprocess.Popen) -> None:
    """Wait for `condition()` (a state, not a duration); fail early if a process died."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{proc.args[0]} exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.5)


def _prometheus_config(tmp_path: Path, runs_dir: Path) -> Path:
    """The committed config, scraping every second, its run discovery pointed at `runs_dir`."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    run_job = next(job for job in config["scrape_configs"] if job["job_name"] == "fedmsr-run")
    (discovery,) = run_job["file_sd_configs"]
    committed = Path(discovery["files"][0])
    assert committed.parent.name == TARGETS_DIR, committed  # the directory runs write to
    discovery["files"] = [str(runs_dir / TARGETS_DIR / committed.name)]
    discovery["refresh_interval"] = "1s"
    config["scrape_configs"] = [run_job]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _stop(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_dashboards_and_alerts_on_a_real_prometheus(tmp_path) -> None:
    prometheus_bin, promtool = _tool("prometheus"), _tool("promtool")
    run_dir = tmp_path / "runs" / "live"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    run = subprocess.Popen(
        [*FEDMSR, "run", "--devices", "3", "--rounds", "2", "--seed", "5", *SMALL, "--dp-sgd",
         "--secure-aggregation",
         "--runs-dir", str(tmp_path / "runs"), "--run-id", "live", "--metrics-port", "0",
         "--metrics-linger-s", "900"],
        env=env, stdout=open(tmp_path / "run.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    prometheus = None
    engine_pgid = None
    try:
        wait_for(run_dir / "metrics.json", run, timeout_s=300)
        engine_pgid = json.loads((run_dir / "engine.json").read_text())["pgid"]
        endpoint = json.loads((run_dir / "metrics.json").read_text())
        prom_port = _free_port()
        base = f"http://127.0.0.1:{prom_port}"
        prometheus = subprocess.Popen(
            [prometheus_bin, f"--config.file={_prometheus_config(tmp_path, tmp_path / 'runs')}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=open(tmp_path / "prometheus.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115

        def completed_seen() -> bool:
            try:
                result = _query(base, 'fedmsr_run_status{status="completed"} == 1')
            except OSError:
                return False  # Prometheus not listening yet
            return bool(result.get("data", {}).get("result"))

        _poll(completed_seen, "Prometheus saw the run complete", 400, run, prometheus)
        # found through the run's target file, on the port it got, labelled with its id
        (target,) = _api(base, "/api/v1/targets")["data"]["activeTargets"]
        assert target["labels"]["instance"] == f"127.0.0.1:{endpoint['port']}"
        assert (target["labels"]["job"], target["labels"]["run"]) == ("fedmsr-run", "live")

        def rules_evaluated_after_completion() -> bool:
            groups = _api(base, "/api/v1/rules")["data"]["groups"]
            return all(rule["health"] != "unknown" for g in groups for rule in g["rules"])

        _poll(rules_evaluated_after_completion, "every rule evaluated", 60, prometheus)

        # every panel query of every dashboard returns data for this run (the metrics only
        # `fedmsr monitor` exports excepted: they must evaluate, and be empty here), for
        # the run selected by id and for All; another job or run selects nothing
        empty = []
        for path in sorted(dashboards.OUTPUT_DIR.glob("*.json")):
            for panel in json.loads(path.read_text())["panels"]:
                for target in panel.get("targets", []):
                    expr = target["expr"]
                    monitor_only = bool(_metric_names(expr) & dashboards.MONITOR_ONLY)
                    for run_value in ("live", dashboards.ALL):
                        result = _query(base, expr, run=run_value)
                        assert result["status"] == "success", (panel["title"], result)
                        if bool(result["data"]["result"]) == monitor_only:
                            empty.append(f"{path.name}: {panel['title']}: {expr}")
                    for job, run_value in (("fedmsr-monitor", ".*"), ("fedmsr-run", "other")):
                        result = _query(base, expr, job=job, run=run_value)
                        assert result["data"]["result"] == [], (job, run_value, expr)
        assert not empty, "panel queries without data (or monitor-only with):\n" + \
            "\n".join(empty)
        # the template variables' own queries offer this job and this run
        variables = json.loads((dashboards.OUTPUT_DIR / "fedmsr-budgets.json").read_text())[
            "templating"]["list"]
        for variable in variables:  # the variables' own queries find this job and run
            values = _api(base, "/api/v1/series", **{"match[]": re.search(
                r"label_values\((.*), \w+\)", variable["query"]).group(1).replace(
                    "$job", "fedmsr-run")})["data"]
            assert any(v.get(variable["name"]) == {"job": "fedmsr-run", "run": "live"}[
                variable["name"]] for v in values), variable["name"]

        # every alert expression evaluates, in the API and in the rule manager
        rules = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
        for rule in (r for g in rules["groups"] for r in g["rules"]):
            result = _query(base, rule["expr"])
            assert result["status"] == "success", (rule["alert"], result)
        groups = _api(base, "/api/v1/rules")["data"]["groups"]
        loaded = {rule["name"]: rule for g in groups for rule in g["rules"]}
        assert set(loaded) == {r["alert"] for g in rules["groups"] for r in g["rules"]}
        for name, rule in loaded.items():
            assert rule["health"] == "ok" and not rule.get("lastError"), (name, rule)
        # the run neither failed a round nor dropped a device: those alerts stay quiet
        assert loaded["FedmsrRoundsFailed"]["state"] == "inactive"
        assert loaded["FedmsrDropoutSpike"]["state"] == "inactive"

        # what Prometheus holds agrees with the run's own history
        history = json.loads((run_dir / "history.json").read_text())

        def scalar(expr: str) -> float:
            result = _query(base, expr)["data"]["result"]
            assert len(result) == 1, (expr, result)
            return float(result[0]["value"][1])

        assert scalar('fedmsr_rounds_total{status="completed"}') == len(history) == 2
        assert scalar('fedmsr_probe_accuracy_ratio{probe="utility"}') == pytest.approx(
            history[-1]["utility_acc"])
        assert scalar("fedmsr_representation_kl_bytes * 8") == pytest.approx(
            history[-1]["kl_bits"])
        assert scalar("fedmsr_devices_sampled_total") == sum(r["sampled"] for r in history)
        events = [e for r in history for e in r["dp_events"]]
        assert events and scalar("fedmsr_dp_events_total") == len(events)
        assert scalar("fedmsr_dp_noise_multiplier_sum") == pytest.approx(
            sum(e["noise_multiplier"] for e in events))
        assert scalar('fedmsr_round_phase_duration_seconds_sum{phase="train"}') == pytest.approx(
            sum(r["train_phase_s"] for r in history))
        # every phase of every round was timed, the secure-aggregation stages included
        for phase in PHASES:
            count = f'fedmsr_round_phase_duration_seconds_count{{phase="{phase}"}}'
            assert scalar(count) == len(history), phase
        assert scalar('fedmsr_round_phase_duration_seconds_sum{phase="secagg_unmask"}') == \
            pytest.approx(sum(r["secagg_phases_s"]["unmask"] for r in history))

        # the page Prometheus scraped passes promtool's metric lint
        page = urllib.request.urlopen(endpoint["url"], timeout=10).read()
        lint = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True,
                              timeout=60, check=False)
        assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    finally:
        if prometheus is not None:
            _stop(prometheus, signal.SIGTERM)
        _stop(run, signal.SIGINT)  # the launcher stops the engine's process group
        if engine_pgid is not None and group_members(engine_pgid):
            os.killpg(engine_pgid, signal.SIGKILL)
    assert engine_pgid is not None and group_members(engine_pgid) == []
    assert prometheus.returncode == 0
