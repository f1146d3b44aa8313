"""A device revoked after it checked in and before its update is aggregated.

Specified behaviour (docs/registry.md): the update is dropped, as `revoked`, even though the
device was eligible when it trained; a revocation says the device is not to be trusted
from now on (lost, stolen, compromised), and its update has not been used yet. The DP
release is still charged: the server received the update (never under-count).

The test holds device 2's reply (tests/faulty_devices.py) until devices 0 and 1 have
trained: check-in is over and the round is in flight. It revokes device 2 then, and
releases the reply.
"""

from __future__ import annotations


import pytest

from fl_server.checkpoint import load_checkpoint
from fl_server.config import RunConfig
from fl_server.launcher import prepare_new_run
from fl_server.registry.db import dispose_engines
from fl_server.run_status import read_status
from tests.helpers import PATIENT_CONFIG, fedmsr, history, round_outcome
from tests.test_db_outage import release, wait_until
from tests.test_fault_injection import _enroll, start_faulty_engine, stop_group
from tests.test_faults import assert_same_model, honest_rounds

pytestmark = pytest.mark.slow


def test_an_update_of_a_device_revoked_mid_round_is_dropped(tmp_path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    _enroll(tmp_path, url, 3)
    monkeypatch.setenv("FEDMSR_DB", url)
    monkeypatch.chdir(tmp_path)
    cfg = prepare_new_run(RunConfig(
        devices=3, rounds=1, seed=8, clips_per_day=4, days=2, min_train_devices=2,
        runs_dir=str(tmp_path / "runs"), run_id="revoked", **PATIENT_CONFIG).validate())
    dispose_engines()
    run_dir = cfg.run_dir()
    log = (tmp_path / "engine.log").open("w")
    proc = start_faulty_engine(run_dir, "2:hold@1", log=log, cwd=tmp_path)
    trained = [run_dir / "test-updates" / f"round-1-device-{d}.npz" for d in (0, 1)]
    try:
        wait_until(lambda: all(p.exists() for p in trained), "devices 0 and 1 to train", proc)
        revoked = fedmsr("--db", url, "fleet", "revoke", "cam-2", "--reason", "stolen",
                         cwd=tmp_path, timeout=120)
        assert revoked.returncode == 0, revoked.stderr
        release(run_dir, 2, 1)
        proc.wait(timeout=300)
    finally:
        stop_group(proc)
        log.close()
    engine_log = (tmp_path / "engine.log").read_text()[-3000:]
    status = read_status(run_dir)
    assert status is not None and status.status == "completed", (status, engine_log)
    [row] = history(run_dir)
    assert row["devices"] == [0, 1], round_outcome(row)
    assert row["rejected"] == {"revoked": 1}, round_outcome(row)
    [dropped] = row["rejected_devices"]
    assert dropped["device"] == 2 and dropped["reason"] == "revoked"
    assert "revoked after it checked in" in dropped["detail"]
    # the model is the mean of devices 0 and 1 alone (recomputed without Flower)
    [want] = honest_rounds(cfg, [[0, 1]])
    assert_same_model(load_checkpoint(run_dir / "checkpoints" / "round-0001.json").arrays,
                      want)
