"""Bad command-line input: one clear line on stderr, exit 2, nothing written."""

from __future__ import annotations

import pytest

from tests.helpers import fedmsr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--devices", "0"], "--devices: must be a positive integer"),
        (["--devices", "abc"], "--devices"),
        (["--image-size", "48"], "--image-size: "),
        (["--utility", "simclr"], "--utility: "),
        (["--dp-sgd", "--noise-multiplier", "0"], "--noise-multiplier: "),
        (["--fraction-train", "2"], "--fraction-train: "),
        (["--dp", "local", "--clip", "0"], "--clip: must be a finite number > 0 with DP-SGD"),
        (["--round-timeout", "0"], "--round-timeout: must be a finite number > 0"),
        (["--reply-timeout", "inf"], "--reply-timeout: must be a finite number > 0"),
        (["--fleet-wait", "-1"], "--fleet-wait: must be a finite number > 0"),
        (["--eval-every", "0"], "--eval-every: must be a positive integer, got 0"),
        (["--probe-devices", "-1"], "--probe-devices: must be an integer >= 0, got -1"),
        (["--probe-devices", "3", "--eval-dataset", "x.csv"],
         "--probe-devices: chooses devices of the synthetic fleet"),
        (["--round-timeout", "nan"], "--round-timeout: must be a finite number > 0"),
        # An infinite default cap would fail every reservation of a DP run.
        (["--dp", "local", "--epsilon-cap", "inf"], "--epsilon-cap: must be a finite epsilon"),
        (["--dp", "local", "--epsilon-cap", "1e309"], "--epsilon-cap: must be a finite"),
        (["--min-devices", "9"], "--min-devices: 9 is more than the fleet's 8 devices"),
        (["--frobnicate"], "--frobnicate"),
        (["--resume", "no-such-run"], "--resume: no run configuration"),
        (["--resume", "x", "--devices", "3"], "--devices"),
    ],
)
def test_bad_arguments(tmp_path, args: list[str], needle: str) -> None:
    result = fedmsr("run", "--runs-dir", str(tmp_path / "runs"), *args, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0]
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_existing_run_id_is_not_overwritten(tmp_path) -> None:
    run_dir = tmp_path / "runs" / "taken"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text("{}")
    result = fedmsr("run", "--runs-dir", str(tmp_path / "runs"), "--run-id", "taken", timeout=60)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert (run_dir / "run.json").read_text() == "{}"


def test_help_lists_the_run_options() -> None:
    result = fedmsr("run", "--help", timeout=60)
    assert result.returncode == 0
    for option in ("--devices", "--rounds", "--seed", "--dp-sgd", "--noise-multiplier", "--clip",
                   "--runs-dir", "--resume", "--min-devices", "--round-timeout"):
        assert option in result.stdout
