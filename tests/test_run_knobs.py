"""`fedmsr run`'s training knobs (--batch-size, --lr, --latent-dim), `--config FILE` with
the command line on top, and `--dry-run`'s budget forecast, checked against dp-accounting
called directly (not the project's wrapper)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from sqlalchemy import inspect, text

from fl_server import privacy_ledger
from fl_server.cli import main
from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
from fl_server.registry import db
from privacy.accounting import DpEvent, EventKind
from tests.test_secagg_workflow import LoopbackGrid
from tests.reference_memo import reference

DELTA = 1e-5
#: 2 days x 4 clips = 8 clips per device.
TINY = ["--devices", "2", "--days", "2", "--clips-per-day", "4"]


@reference
def independent_epsilon(*parts: tuple[float, float, int], delta: float = DELTA) -> float:
    """PLD epsilon of the composed Poisson-subsampled Gaussians (q, sigma, count), with a
    finer discretisation than the project uses: the figure the project reports must be at
    least this (it never reports below the exact value) and within 2% of it."""
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    for q, sigma, count in parts:
        event = dp_accounting.GaussianDpEvent(sigma)
        if q < 1:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, count))
    return accountant.get_epsilon(delta)


def rdp_epsilon(*parts: tuple[float, float, int], delta: float = DELTA) -> float:
    accountant = rdp_privacy_accountant.RdpAccountant()
    for q, sigma, count in parts:
        accountant.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), count))
    return accountant.get_epsilon(delta)


def rows(stdout: str) -> dict[str, dict[str, str]]:
    """The dry run's table: device name -> column -> cell."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("device "))
    names = lines[header].split()
    out = {}
    for line in lines[header + 1:]:
        cells = line.split(maxsplit=len(names) - 1)
        out[cells[0]] = dict(zip(names, cells, strict=True))
    return out


def snapshot(root: Path) -> dict[str, int]:
    """Every file under `root` and its size."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file()}


def table_counts(url: str) -> dict[str, int]:
    engine = db.get_engine(url)
    with engine.connect() as c:
        return {t: c.execute(text(f'SELECT COUNT(*) FROM "{t}"')).scalar_one()
                for t in inspect(engine).get_table_names()}


@pytest.fixture
def no_registry(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("FEDMSR_DB", raising=False)
    monkeypatch.chdir(tmp_path)  # no fedmsr.db here: no registry
    return tmp_path


# -- the knobs reach the devices -----------------------------------------------------------

class TwoDevices(LoopbackGrid):
    """Flower's grid for the first two simulated devices, in process."""

    def get_node_ids(self):
        return [100, 101]


def test_config_file_and_command_line_reach_the_trainer_and_the_ledger(
        tmp_path, monkeypatch, capsys, task_identity) -> None:
    """`fedmsr run --config` with a batch size and a latent size from the file and a
    learning rate from both (the command line wins): the ledger charges q = 4 / 8 clips
    (2 steps), the stored encoder's latent size is the file's, run.json has every value."""
    from fl_server import launcher
    from fl_server.federation import run_federation
    from fl_server.run_status import read_status

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("FEDMSR_DB", url)
    monkeypatch.chdir(tmp_path)
    db.upgrade(url)
    enroll(url, [DeviceSpec(f"cam-{i}", epsilon_cap=None, delta_cap=DELTA, device_index=i)
                 for i in range(2)], BundleOptions(bundles_dir=tmp_path / "devices"))

    def in_process(cfg, console=None):
        run_federation(TwoDevices(), cfg)
        return read_status(cfg.run_dir())

    monkeypatch.setattr(launcher, "launch_simulation", in_process)
    (tmp_path / "run.toml").write_text(
        'dp = "local"\nrounds = 1\ndevices = 2\ndays = 2\nclips-per-day = 4\n'
        'batch-size = 4\nlatent-dim = 8\nlr = 0.005\nmin-devices = 2\n'
        f'delta = {DELTA}\nruns-dir = "runs"\n')
    code = main(["run", "--config", "run.toml", "--lr", "0.01", "--run-id", "knobs"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "runs" / "knobs" / "run.json").read_text())
    assert (saved["batch_size"], saved["latent_dim"], saved["learning_rate"]) == (4, 8, 0.01)
    assert (saved["rounds"], saved["dp_sgd"], saved["min_train_devices"]) == (1, True, 2)
    charged = [s.events for s in privacy_ledger.budget_states(url, DELTA)]
    assert [[e.event for e in events] for events in charged] == [[DpEvent(0.5, 1.0, 2)]] * 2
    meta = json.loads((tmp_path / "runs" / "knobs" / "final_model.json").read_text())
    assert meta["encoder"]["latent_dim"] == 8
    final = np.load(tmp_path / "runs" / "knobs" / "final_model.npz")
    assert final["activity_head.weight"].shape[1] == 8  # reads z: the stored latent size
    assert "warning" not in capsys.readouterr().err  # q = 0.5: nothing to warn about


# -- --config ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("toml", "line"), [
    ("batchsize = 4", "error: --config run.toml: unknown key 'batchsize' "
                      "(did you mean 'batch-size'?)"),
    ("learning_rate = 0.1", "error: --config run.toml: unknown key 'learning_rate' "
                            "(did you mean 'lr'?)"),
    ("colour = 1", "error: --config run.toml: unknown key 'colour'"),
    ("--lr = 0.1", "error: --config run.toml: key '--lr': write option names without dashes "
                   "('lr')"),
    ('resume = "x"', "error: --config run.toml: key 'resume' is not a setting: give "
                     "--resume on the command line"),
    ('batch-size = "16"', "error: --config run.toml: key 'batch-size' must be an integer, "
                          "got a string ('16')"),
    ("batch-size = 16.0", "error: --config run.toml: key 'batch-size' must be an integer, "
                          "got a float (16.0)"),
    ("lr = true", "error: --config run.toml: key 'lr' must be a number, got a boolean (True)"),
    ('dp-sgd = "yes"', "error: --config run.toml: key 'dp-sgd' must be true or false, got a "
                       "string ('yes')"),
    ("dp = 1", "error: --config run.toml: key 'dp' must be a string, got an integer (1)"),
    ("[batch-size]\nx = 1", "error: --config run.toml: key 'batch-size' must be an integer, "
                            "got a table ({'x': 1})"),
    ("batch-size = 0", "error: --batch-size: must be a positive integer, got 0 (set in "
                       "--config run.toml)"),
    ("lr = nan", "error: --lr: must be a finite number > 0, got nan (set in --config run.toml)"),
    ("batch-size 4", "error: --config run.toml: is not valid TOML: Expected '=' after a key "
                     "in a key/value pair (at line 1, column 12)"),
])
def test_bad_config_files_are_one_line_naming_key_and_fix(no_registry, capsys, toml,
                                                          line) -> None:
    (no_registry / "run.toml").write_text(toml + "\n")
    assert main(["run", "--config", "run.toml", "--runs-dir", "runs"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]
    assert not (no_registry / "runs").exists()


def test_a_missing_or_unreadable_config_file_is_one_line(no_registry, capsys) -> None:
    assert main(["run", "--config", "nope.toml", "--runs-dir", "runs"]) == 2
    assert capsys.readouterr().err.strip() == "error: --config nope.toml: no such file"
    assert main(["run", "--config", ".", "--runs-dir", "runs"]) == 2
    assert capsys.readouterr().err.strip() == "error: --config .: is a directory, not a TOML file"
    (no_registry / "latin1.toml").write_bytes(b'run-id = "caf\xe9"\n')
    assert main(["run", "--config", "latin1.toml", "--runs-dir", "runs"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --config latin1.toml: ")
    assert not (no_registry / "runs").exists()


def test_the_command_line_overrides_the_file_even_at_the_default_value(no_registry,
                                                                       capsys) -> None:
    """An option typed on the command line wins though it equals the default; one left
    out takes the file's value (click's ParameterSource, not a comparison with defaults)."""
    (no_registry / "run.toml").write_text(
        'dp = "local"\nrounds = 2\nbatch-size = 4\ndays = 2\nclips-per-day = 4\n'
        "devices = 1\n")
    assert main(["run", "--config", "run.toml", "--dry-run", "--batch-size", "16",
                 "--runs-dir", "runs"]) == 0
    out = capsys.readouterr()
    assert rows(out.out)["device-0"]["q"] == "1"  # 16 from the command line, not the file's 4
    assert "2 rounds" in out.out  # from the file
    assert "lower --batch-size below 8" in out.err


@pytest.mark.parametrize("extra", [["--config", "run.toml"], ["--dry-run"]])
def test_resume_keeps_its_saved_configuration(no_registry, capsys, extra) -> None:
    (no_registry / "run.toml").write_text("rounds = 1\n")
    assert main(["run", "--resume", "x", "--runs-dir", "runs", *extra]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --resume: the run continues with its saved configuration; drop " + extra[0])


# -- validation of the knobs -----------------------------------------------------------------

@pytest.mark.parametrize(("args", "line"), [
    (["--batch-size", "0"], "error: --batch-size: must be a positive integer, got 0"),
    (["--batch-size", "-3"], "error: --batch-size: must be a positive integer, got -3"),
    (["--lr", "0"], "error: --lr: must be a finite number > 0, got 0.0"),
    (["--lr", "-1e-3"], "error: --lr: must be a finite number > 0, got -0.001"),
    (["--lr", "inf"], "error: --lr: must be a finite number > 0, got inf"),
    (["--lr", "nan"], "error: --lr: must be a finite number > 0, got nan"),
    (["--latent-dim", "0"], "error: --latent-dim: must be a positive integer, got 0"),
    (["--batch-size", "4.5"], "error: Invalid value for '--batch-size': '4.5' is not a valid "
                              "integer."),
])
def test_bad_knobs_are_one_line_naming_the_option(no_registry, capsys, args, line) -> None:
    assert main(["run", "--runs-dir", "runs", *args]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]
    assert not (no_registry / "runs").exists()


def test_dry_run_with_a_bad_value_is_exit_2(no_registry, capsys) -> None:
    assert main(["run", "--dry-run", "--lr", "0", "--runs-dir", "runs"]) == 2
    assert capsys.readouterr().err.strip() == "error: --lr: must be a finite number > 0, got 0.0"


# -- --dry-run -------------------------------------------------------------------------------

def test_dry_run_local_dp_matches_dp_accounting_and_warns_at_q_1(no_registry, capsys) -> None:
    """8 clips, the default batch 16: q = 1, one step a round, and the warning; batch 4:
    q = 0.5, 2 steps a round, no warning. Each figure is dp-accounting's own."""
    assert main(["run", "--dry-run", "--dp", "local", "--rounds", "3", *TINY,
                 "--runs-dir", "runs"]) == 0
    out = capsys.readouterr()
    table = rows(out.out)
    assert sorted(table) == ["device-0", "device-1"]
    row = table["device-0"]
    assert (row["clips"], row["q"], row["steps"]) == ("8", "1", "3")
    exact = independent_epsilon((1.0, 1.0, 3))
    assert exact <= float(row["epsilon"]) + 5e-5 <= exact * 1.02 + 1e-4
    assert out.err.strip().splitlines() == [
        "warning: --batch-size 16 >= the 8 clips of 2 device(s): DP-SGD samples at q = 1, no "
        "subsampling amplification; lower --batch-size below 8"]

    assert main(["run", "--dry-run", "--dp", "local", "--rounds", "3", "--batch-size", "4",
                 "--noise-multiplier", "1.5", *TINY, "--runs-dir", "runs"]) == 0
    out = capsys.readouterr()
    row = rows(out.out)["device-1"]
    assert (row["clips"], row["q"], row["steps"]) == ("8", "0.5", "6")
    exact = independent_epsilon((0.5, 1.5, 6))
    assert exact <= float(row["epsilon"]) + 5e-5 <= exact * 1.02 + 1e-4
    assert float(row["epsilon"]) <= rdp_epsilon((0.5, 1.5, 6))
    assert out.err == ""
    assert not (no_registry / "runs").exists()


def test_dry_run_composes_local_and_central_dp(no_registry, capsys) -> None:
    assert main(["run", "--dry-run", "--dp", "both", "--rounds", "2", "--batch-size", "2",
                 "--client-sample-rate", "0.25", "--central-noise", "2", *TINY,
                 "--runs-dir", "runs"]) == 0
    out = capsys.readouterr().out
    exact = independent_epsilon((0.25, 1.0, 8), (0.25, 2.0, 2))
    epsilon = float(rows(out)["device-0"]["epsilon"])
    assert exact <= epsilon + 5e-5 <= exact * 1.02 + 1e-4
    assert "central DP sigma=2, 2 rounds x 1 step at q=0.25" in out


def test_dry_run_without_dp_charges_nothing(no_registry, capsys) -> None:
    assert main(["run", "--dry-run", *TINY, "--runs-dir", "runs"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "dry run: 2 devices, 3 rounds; nothing was started or written",
        "no DP: the run charges no device's privacy budget"]


def test_dry_run_reads_the_registry_caps_and_spend_and_writes_nothing(
        tmp_path, monkeypatch, capsys) -> None:
    """Three enrolled devices: one already charged, one with a cap the run would pass, one
    without a cap of its own (the run's --epsilon-cap applies). Nothing is written: not a
    registry row, not a file."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("FEDMSR_DB", url)
    monkeypatch.chdir(tmp_path)
    db.upgrade(url)
    enroll(url, [DeviceSpec("cam-0", epsilon_cap=50.0, delta_cap=DELTA, device_index=0),
                 DeviceSpec("cam-1", epsilon_cap=1.0, delta_cap=DELTA, device_index=1),
                 DeviceSpec("cam-2", epsilon_cap=None, delta_cap=None, device_index=2)],
           BundleOptions(bundles_dir=tmp_path / "devices"))
    ids = {s.name: s.device_id for s in privacy_ledger.budget_states(url, DELTA)}
    earlier = DpEvent(0.5, 1.0, 10, EventKind.LOCAL_DP_SGD)
    privacy_ledger.reserve(url, "earlier", 1, [privacy_ledger.Release(ids["cam-0"], earlier)],
                           DELTA, None)
    before_rows, before_files = table_counts(url), snapshot(tmp_path)

    assert main(["run", "--dry-run", "--dp", "local", "--rounds", "2", "--batch-size", "4",
                 "--devices", "3", "--days", "2", "--clips-per-day", "4",
                 "--epsilon-cap", "20", "--delta", str(DELTA), "--runs-dir", "runs"]) == 0
    out = capsys.readouterr()
    assert table_counts(url) == before_rows and snapshot(tmp_path) == before_files
    assert not (tmp_path / "runs").exists()

    table = rows(out.out)
    assert sorted(table) == ["cam-0", "cam-1", "cam-2"]
    run_eps = independent_epsilon((0.5, 1.0, 4))
    spent = independent_epsilon((0.5, 1.0, 10))
    after = independent_epsilon((0.5, 1.0, 14))
    cam0, cam1, cam2 = table["cam-0"], table["cam-1"], table["cam-2"]
    for row in table.values():
        assert run_eps <= float(row["epsilon"]) + 5e-5 <= run_eps * 1.02 + 1e-4
    assert spent <= float(cam0["spent"]) + 5e-5 <= spent * 1.02 + 1e-4
    assert after <= float(cam0["after"]) + 5e-5 <= after * 1.02 + 1e-4
    assert float(cam0["remaining"]) == pytest.approx(50 - float(cam0["spent"]), abs=1e-4)
    assert (cam0["cap"], cam0["verdict"]) == ("50", "fits")
    assert (cam1["cap"], cam1["spent"], cam1["verdict"]) == ("1", "0.0000", "over cap")
    assert (cam2["cap"], cam2["verdict"]) == ("20", "fits")  # the run's --epsilon-cap
    warnings = out.err.strip().splitlines()
    assert len(warnings) == 1 and re.match(
        r"warning: 1 of 3 device\(s\) would go over their epsilon cap during this run \(cam-1: "
        r"epsilon [0-9.]+ after the run, cap 1\)", warnings[0]), warnings


def test_a_dp_run_warns_once_before_training_and_the_ledger_still_decides(
        tmp_path, monkeypatch, capsys, task_identity) -> None:
    """q = 1 and a cap the plan passes: both warnings, once each, before the first round;
    the run is not refused up front, the ledger refuses the round (budget-exhausted)."""
    from fl_server import launcher
    from fl_server.federation import run_federation
    from fl_server.run_status import read_status

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("FEDMSR_DB", url)
    monkeypatch.chdir(tmp_path)
    db.upgrade(url)
    enroll(url, [DeviceSpec(f"cam-{i}", epsilon_cap=1.0, delta_cap=DELTA, device_index=i)
                 for i in range(2)], BundleOptions(bundles_dir=tmp_path / "devices"))
    started = []

    def in_process(cfg, console=None):
        started.append(capsys.readouterr().err)  # what was said before the engine started
        run_federation(TwoDevices(), cfg)
        return read_status(cfg.run_dir())

    monkeypatch.setattr(launcher, "launch_simulation", in_process)
    code = main(["run", "--dp", "local", "--rounds", "1", *TINY, "--delta", str(DELTA),
                 "--runs-dir", "runs", "--run-id", "warned"])
    assert code == 3  # budget-exhausted: the ledger refused the round, nothing trained
    (before,) = started
    lines = before.strip().splitlines()
    assert lines[0] == ("warning: --batch-size 16 >= the 8 clips of 2 device(s): DP-SGD "
                        "samples at q = 1, no subsampling amplification; lower --batch-size "
                        "below 8")
    assert lines[1].startswith("warning: 2 of 2 device(s) would go over their epsilon cap "
                               "during this run (cam-0: ")
    assert len(lines) == 2
    assert "warning" not in capsys.readouterr().err  # said once, not again per round
    assert privacy_ledger.budget_states(url, DELTA)[0].events == ()
