"""`fedmsr run` takes its fleet from the registry, admits only nodes whose signed check-in
verifies, and records the run there (end to end, through Flower's simulation engine;
SQLite and PostgreSQL)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from fl_server.registry import db
from tests.helpers import SMALL, fedmsr, history


@pytest.mark.slow
def test_a_revoked_device_takes_no_part_and_the_run_is_recorded(registry_url, tmp_path) -> None:
    for args in (["db", "upgrade"], ["fleet", "enroll", "--count", "4", "--prefix", "d-"],
                 ["fleet", "revoke", "d-1", "--reason", "lost"]):
        result = fedmsr("--db", registry_url, *args, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stderr
    # d-3 stays eligible in the registry but its simulated node has no enrollment key:
    # it cannot sign the check-in, so it takes no part either.
    (tmp_path / "devices" / "d-3" / "device.key").unlink()
    result = fedmsr("--db", registry_url, "run", "--devices", "4", "--rounds", "1", "--seed", "2",
                    *SMALL, "--runs-dir", str(tmp_path / "runs"), "--run-id", "reg",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "reg"
    assert json.loads((run_dir / "run.json").read_text())["device_indices"] == [0, 2, 3]
    [record] = history(run_dir)
    # Four nodes answered the roll call; the revoked device's and the unsigned one's were
    # left out of the round.
    assert record["devices"] == [0, 2] and record["sampled"] == 2
    with db.get_engine(registry_url).connect() as c:
        assert c.execute(text("SELECT id, status, planned_rounds, completed_rounds FROM runs")
                         ).one() == ("reg", "completed", 1, 1)
        participants = c.execute(text(
            "SELECT d.name FROM round_participation p JOIN devices d ON d.id = p.device_id "
            "JOIN rounds r ON r.id = p.round_id WHERE r.run_id = 'reg' ORDER BY d.name"))
        assert list(participants.scalars()) == ["d-0", "d-2"]
        status = dict(c.execute(text("SELECT name, status FROM devices")).all())
        assert status == {"d-0": "active", "d-1": "revoked", "d-2": "active",
                          "d-3": "enrolled"}
        loss = c.execute(text("SELECT loss FROM rounds WHERE run_id = 'reg'")).scalar()
        assert loss == pytest.approx(record["loss"])
        assert "run.start" in c.execute(text("SELECT action FROM audit_log")).scalars().all()


@pytest.mark.slow
def test_a_run_signs_with_the_bundles_enrolled_elsewhere(tmp_path) -> None:
    """Enrolled with --bundles-dir X, run with no option about bundles, another fleet's
    bundles in ./devices: every device's signed check-in (whole answer, its own ledger
    report included: a DP run) verifies and trains."""
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    other = f"sqlite:///{tmp_path / 'other.db'}"
    for db_url, args in ((url, ["db", "upgrade"]), (other, ["db", "upgrade"]),
                         (other, ["fleet", "enroll", "--count", "2", "--prefix", "old-"]),
                         (url, ["fleet", "enroll", "--count", "2", "--prefix", "cam-",
                                "--bundles-dir", str(tmp_path / "X")])):
        result = fedmsr("--db", db_url, *args, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "devices" / "old-0").is_dir()  # where the old lookup would have looked
    result = fedmsr("--db", url, "run", "--devices", "2", "--rounds", "1", "--seed", "2",
                    "--dp", "local", *SMALL, "--runs-dir", str(tmp_path / "runs"),
                    "--run-id", "x", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tmp_path / "runs" / "x" / "run.json").read_text())
    assert run["extra"]["bundles_dir"] == str((tmp_path / "X").resolve())
    [record] = history(tmp_path / "runs" / "x")
    assert record["devices"] == [0, 1], record
