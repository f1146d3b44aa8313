"""`fedmsr budget plan`: through the real console script (tests/helpers.fedmsr) for the
JSON plans, and through the console script's entry function `fl_server.cli.main` in-process
for the many bad-input cases (same code path, without a 5-10 s interpreter start each)."""

from __future__ import annotations

import json

import dp_accounting as dpa
import pytest

from fl_server.cli import main
from tests.helpers import fedmsr

PLAN = ["budget", "plan", "--rounds", "5", "--sample-rate", "0.02", "--steps-per-round", "20",
        "--delta", "1e-5"]


def independent_pld(q: float, sigma: float, steps: int, delta: float) -> float:
    acc = dpa.pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)),
                                        steps))
    return acc.get_epsilon(delta)


def test_plan_with_noise_json_matches_independent_pld():
    proc = fedmsr(*PLAN, "--noise", "1.1", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    ref = independent_pld(0.02, 1.1, 100, 1e-5)
    assert out["noise_multiplier"] == 1.1 and out["calibrated"] is False
    assert ref <= out["epsilon"] <= 1.02 * ref
    assert out["epsilon_rdp"] >= out["epsilon"]


def test_plan_with_target_calibrates_sigma():
    proc = fedmsr(*PLAN, "--target-epsilon", "1.0", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["calibrated"] is True
    assert 0.99 <= out["epsilon"] <= 1.0
    assert independent_pld(0.02, out["noise_multiplier"], 100, 1e-5) <= 1.0


def test_plan_text_output_names_calibrated_sigma(capsys):
    assert main([*PLAN, "--target-epsilon", "2.0"]) == 0
    out = capsys.readouterr().out
    assert "calibrated noise multiplier:" in out and "epsilon:" in out and "RDP bound" in out


def test_bad_input_through_console_script():
    proc = fedmsr("budget", "plan", "--rounds", "2", "--sample-rate", "2", "--noise", "1")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: --sample-rate: must be in (0, 1] (batch / dataset size), got 2.0"]


@pytest.mark.parametrize("args,option", [
    (["--rounds", "0", "--sample-rate", "0.1", "--noise", "1"], "--rounds"),
    (["--rounds", "2", "--sample-rate", "1.5", "--noise", "1"], "--sample-rate"),
    (["--rounds", "2", "--sample-rate", "0", "--noise", "1"], "--sample-rate"),
    (["--rounds", "2", "--sample-rate", "0.1", "--noise", "0"], "--noise"),
    (["--rounds", "2", "--sample-rate", "0.1", "--noise", "1", "--steps-per-round", "0"],
     "--steps-per-round"),
    (["--rounds", "2", "--sample-rate", "0.1", "--noise", "1", "--delta", "1"], "--delta"),
    (["--rounds", "2", "--sample-rate", "0.1"], "--noise/--target-epsilon"),
    (["--rounds", "2", "--sample-rate", "0.1", "--noise", "1", "--target-epsilon", "1"],
     "--noise/--target-epsilon"),
    (["--rounds", "2", "--sample-rate", "0.1", "--target-epsilon", "-1"], "--target-epsilon"),
    (["--rounds", "2", "--sample-rate", "0.1", "--noise", "1", "--kind", "x"], "--kind"),
])
def test_bad_input_one_line_exit_2(args, option, capsys):
    assert main(["budget", "plan", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {option}:")
