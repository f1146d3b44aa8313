"""`fedmsr budget show`: the ledger as an operator and an auditor see it, on SQLite and
PostgreSQL. The JSON's events alone, recomputed with dp-accounting's PLD accountant (not our
code), give the reported epsilon within 2% and never above it."""

from __future__ import annotations

import json
import os

import dp_accounting as dpa
import pytest

from fl_server import privacy_ledger as ledger
from fl_server.cli import main
from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
from fl_server.registry import db
from fl_server.registry.devices import device_ids_for_indices
from privacy.accounting import DpEvent, EventKind
from tests.helpers import fedmsr

CENTRAL = EventKind.CENTRAL_DP_FEDAVG
#: A heterogeneous life: two runs, both kinds, different q / sigma / steps.
LIFE = [("run-a", 1, DpEvent(0.02, 1.1, 30)), ("run-a", 1, DpEvent(0.1, 2.0, 1, CENTRAL)),
        ("run-a", 2, DpEvent(0.02, 1.1, 30)), ("run-b", 1, DpEvent(0.05, 0.9, 12)),
        ("run-b", 2, DpEvent(1.0, 5.0, 1, CENTRAL)), ("run-b", 3, DpEvent(0.01, 0.7, 100))]


def auditor_epsilon(events: list[dict], delta: float) -> float:
    """Only the JSON and dp-accounting: what an auditor outside fedmsr would run (equal
    mechanisms merged by adding steps, which is exact; pessimistic PLD, an upper bound)."""
    steps: dict[tuple[float, float], int] = {}
    for e in events:
        key = (e["sample_rate"], e["noise_multiplier"])
        steps[key] = steps.get(key, 0) + e["steps"]
    acc = dpa.pld.PLDAccountant(value_discretization_interval=5e-4)
    for (q, sigma), n in steps.items():
        acc.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), n)
    return acc.get_epsilon(delta)


@pytest.fixture
def charged(registry_url, tmp_path, monkeypatch):
    """cam-0 lived LIFE (last round still reserved); cam-1 has no delta cap; cam-2 nothing."""
    db.upgrade(registry_url)
    enroll(registry_url, [DeviceSpec("cam-0", epsilon_cap=50.0),
                          DeviceSpec("cam-1", epsilon_cap=None, delta_cap=None),
                          DeviceSpec("cam-2")], BundleOptions(bundles_dir=tmp_path / "b"))
    ids = device_ids_for_indices(registry_url, [0, 1])
    for run, rnd, event in LIFE:
        ledger.reserve(registry_url, run, rnd, [ledger.Release(ids[0], event)], 1e-5, None)
        if (run, rnd) != ("run-b", 3):
            ledger.commit(registry_url, run, rnd, [ids[0]])
    ledger.reserve(registry_url, "run-b", 1, [ledger.Release(ids[1], LIFE[0][2])], 1e-5, None)
    monkeypatch.setenv(db.ENV_VAR, registry_url)
    return registry_url


def test_json_lets_an_auditor_recompute_epsilon(charged, capsys) -> None:
    """Through the real console script on SQLite (its entry function on PostgreSQL, to
    spare an interpreter start)."""
    if charged.startswith("sqlite"):
        proc = fedmsr("--db", charged, "budget", "show", "cam-0", "--json")
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
    else:
        assert main(["budget", "show", "cam-0", "--json"]) == 0
        out = capsys.readouterr().out
    (dev,) = json.loads(out)["devices"]
    assert (dev["name"], dev["delta"], dev["epsilon_cap"], dev["rounds"]) == (
        "cam-0", 1e-5, 50.0, 5)
    assert [(e["run"], e["round"], e["kind"], e["status"]) for e in dev["events"]] == [
        (run, rnd, ev.kind.value, "reserved" if (run, rnd) == ("run-b", 3) else "committed")
        for run, rnd, ev in LIFE]
    assert [(e["sample_rate"], e["noise_multiplier"], e["steps"]) for e in dev["events"]] == [
        (ev.sample_rate, ev.noise_multiplier, ev.steps) for _, _, ev in LIFE]
    ref = auditor_epsilon(dev["events"], dev["delta"])
    assert ref <= dev["epsilon"] <= 1.02 * ref
    assert dev["epsilon_rdp"] >= dev["epsilon"]
    assert dev["last_event"] == dev["events"][-1] and dev["last_event"]["status"] == "reserved"


def test_table_lists_every_device_and_its_own_delta(charged, capsys) -> None:
    assert main(["budget", "show", "--delta", "1e-6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:6] == ["device", "epsilon", "delta", "cap", "rounds", "events"]
    table = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(table) == {"cam-0", "cam-1", "cam-2"}
    assert table["cam-0"][2:6] == ["1.0e-05", "50", "5", "6"]  # its own delta cap
    assert table["cam-0"][6:9] == ["run-b#3", "local-dp-sgd", "reserved"]
    assert table["cam-1"][2:6] == ["1.0e-06", "-", "1", "1"]   # no delta cap: --delta
    assert table["cam-2"][1:] == ["0.0000", "1.0e-05", "8", "0", "0", "-"]
    assert main(["budget", "show", "--json", "--delta", "1e-6", "cam-1"]) == 0
    (dev,) = json.loads(capsys.readouterr().out)["devices"]
    ref = auditor_epsilon(dev["events"], 1e-6)
    assert dev["delta"] == 1e-6 and ref <= dev["epsilon"] <= 1.02 * ref


@pytest.mark.parametrize(("args", "needle"), [
    (["budget", "show", "nope"], "no device 'nope'"),
    (["budget", "show", "--delta", "2"], "--delta: must be in (0, 1)"),
])
def test_bad_input_is_one_line(charged, capsys, args, needle) -> None:
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("error: ") and needle in line


def test_a_database_without_the_ledger_is_refused(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv(db.ENV_VAR, f"sqlite:///{tmp_path / 'empty.db'}")
    monkeypatch.chdir(tmp_path)
    assert main(["budget", "show"]) == 2
    assert "db upgrade" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "empty.db")
