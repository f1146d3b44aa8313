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
