"""`fedmsr monitor` between runs reads the fleet from the registry (SQLite and PostgreSQL)."""

from __future__ import annotations

import re

import pytest

from fl_server.cli import main


def _samples(page: str, name: str) -> dict[str, float]:
    found = {}
    for line in page.splitlines():
        match = re.match(rf'^{name}\{{status="([^"]+)"\}} (\S+)$', line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def test_monitor_serves_devices_by_status_from_the_registry(registry_url, tmp_path, monkeypatch,
                                                            capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDMSR_DB", registry_url)
    assert main(["db", "upgrade"]) == 0
    assert main(["fleet", "enroll", "--count", "3", "--prefix", "cam-"]) == 0
    assert main(["fleet", "revoke", "cam-1", "--reason", "lost"]) == 0
    (tmp_path / "runs").mkdir()  # no run yet: the fleet panels must still have data
    capsys.readouterr()
    assert main(["monitor", "--once", "--runs-dir", str(tmp_path / "runs")]) == 0
    page = capsys.readouterr().out
    devices = _samples(page, "fedmsr_registry_devices")
    assert devices.get("enrolled") == 2.0 and devices.get("revoked") == 1.0
    assert devices.get("active", 0.0) == 0.0
    assert _samples(page, "fedmsr_devices") == {}  # no run: no run's devices
    assert "fedmsr_run_start_time_seconds" not in page  # no run: no start time at all


def test_budget_show_and_the_dashboards_call_the_same_figure_epsilon(registry_url, tmp_path,
                                                                    monkeypatch, capsys) -> None:
    """What `fedmsr budget show` prints as epsilon (reported, PLD) is what the dashboards'
    "ε spent" panels query; the RDP bound is a separate, labelled series and is larger."""
    import json

    from fl_server import privacy_ledger as ledger
    from monitoring import dashboards
    from privacy.accounting import DpEvent

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDMSR_DB", registry_url)
    assert main(["db", "upgrade"]) == 0
    assert main(["fleet", "enroll", "--count", "3", "--prefix", "cam-"]) == 0
    capsys.readouterr()
    assert main(["budget", "show", "--json"]) == 0
    ids = [d["id"] for d in json.loads(capsys.readouterr().out)["devices"]]
    ledger.reserve(registry_url, "r1", 1, [ledger.Release(ids[0], DpEvent(0.05, 1.0, 20)),
                                           ledger.Release(ids[1], DpEvent(0.1, 0.9, 40))],
                   1e-5, None)
    assert main(["budget", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["devices"]
    spent = sorted(d["epsilon"] for d in shown)
    assert spent[0] == 0.0 and 0 < spent[1] < spent[2]
    (tmp_path / "runs").mkdir()
    assert main(["monitor", "--once", "--runs-dir", str(tmp_path / "runs")]) == 0
    page = {line.split(" ")[0]: float(line.split(" ")[1])
            for line in capsys.readouterr().out.splitlines() if line and line[0] != "#"}

    board = json.loads((dashboards.OUTPUT_DIR / "fedmsr-budgets.json").read_text())
    panels = {p["title"]: p for p in board["panels"] if p["type"] != "row"}
    # a panel that says ε spent queries the reported figure first; the bound is only ever
    # a series (or panel) labelled as the RDP bound
    assert [title for title in panels if "ε spent" in title] == ["Max ε spent"]
    for title, panel in panels.items():
        for target in panel["targets"]:
            if "rdp_bound" in target["expr"]:
                assert "RDP bound" in target["legendFormat"] or "RDP bound" in title, title
    spent_target, bound_target = panels["Max ε spent"]["targets"]
    assert "RDP bound" not in spent_target["legendFormat"]
    max_metric = re.match(r"(\w+)\{", spent_target["expr"]).group(1)
    assert page[max_metric] == pytest.approx(spent[2], rel=1e-9)
    bound_metric = re.match(r"(\w+)\{", bound_target["expr"]).group(1)
    rdp = max(d["epsilon_rdp"] for d in shown)
    assert page[bound_metric] == pytest.approx(rdp, rel=1e-9) and rdp > spent[2]
    # the text table prints the same figure under "epsilon"
    assert main(["budget", "show"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split()[1] == "epsilon"
    assert max(float(row.split()[1]) for row in rows[1:]) == pytest.approx(spent[2], abs=5e-5)
