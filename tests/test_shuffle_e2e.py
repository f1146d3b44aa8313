"""Unlinkable collection end to end: `fedmsr run --shuffler` on Flower's simulation engine,
with the real `fedmsr shuffler start` process on 127.0.0.1. The store fills with rows that
carry no device, the ledgers still charge each device, the tracker says why it has no curve."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from sqlalchemy import text

from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
from fl_server.registry import db
from privacy.payload import payload_size
from tests.helpers import EXIT_WAIT_S, SMALL, fedmsr, history

CLIPS = 4


@pytest.fixture
def shuffler_url(tmp_path):
    key = tmp_path / "shuffler.pem"
    assert fedmsr("shuffler", "keygen", "--out", str(key)).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "fl_server.cli", "shuffler", "start",
                             "--key", str(key), "--port", "0", "--min-crowd", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        yield match.group(1)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=EXIT_WAIT_S)


def test_run_refuses_a_shuffler_laxer_than_min_crowd(tmp_path, shuffler_url):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    db.upgrade(url)
    result = fedmsr("--db", url, "run", "--devices", "2", "--rounds", "1", "--collect-every",
                    "1", "--shuffler", shuffler_url, "--min-crowd", "5",
                    "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2
    assert re.search(r"error: --shuffler: .*releases crowds of 2, fewer than --min-crowd 5",
                     result.stderr)
    assert not (tmp_path / "runs").exists()
    result = fedmsr("--db", url, "run", "--rounds", "1", "--shuffler", shuffler_url,
                    cwd=tmp_path)
    assert result.returncode == 2 and "error: --shuffler: " in result.stderr
    assert "--collect-every" in result.stderr


@pytest.mark.slow
def test_unlinkable_run_stores_rows_without_device(tmp_path, shuffler_url):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    db.upgrade(url)
    enroll(url, [DeviceSpec(f"d-{i}") for i in range(3)],
           BundleOptions(bundles_dir=tmp_path / "devices"))
    result = fedmsr("--db", url, "run", "--devices", "3", "--rounds", "1", "--seed", "5",
                    *SMALL, "--collect-every", "1", "--collect-clips", str(CLIPS),
                    "--shuffler", shuffler_url, "--min-crowd", "2",
                    "--time-granularity-days", "7", "--runs-dir", str(tmp_path / "runs"),
                    "--run-id", "unl", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = history(tmp_path / "runs" / "unl")[-1]
    with db.get_engine(url).connect() as c:
        linked = c.execute(text("SELECT count(*) FROM representations")).scalar()
        rows = c.execute(text("SELECT pseudonym, window_day, granularity_days, "
                              "length(payload) FROM unlinkable_representations")).all()
        ledger = c.execute(text("SELECT device_id, clips, bits FROM information_ledger")).all()
    assert linked == 0  # nothing went to the per-device table
    assert len(ledger) == 3 and all(bits > 0 for *_, bits in ledger)
    assert len(rows) == sum(clips for _, clips, _ in ledger) == 3 * CLIPS
    assert len({p for p, *_ in rows}) == len(rows)
    assert {(w % 7, g, n) for _, w, g, n in rows} == {(0, 7, payload_size(32, "int8"))}
    unlinkable = record["unlinkable"]
    assert unlinkable["senders"] == 3 and unlinkable["stored"] == len(rows)
    assert unlinkable["unopened"] == 0 and "refused" not in unlinkable
    assert record["leakage"] is None and "unlinkable" in record["leakage_skipped"]
    (entry,) = json.loads((tmp_path / "runs" / "unl" / "leakage.json").read_text())
    assert entry["unlinkable"] is True and entry["stored"] == len(rows)
    key = tmp_path / "runs" / "analyzer.pem"
    assert (key.stat().st_mode & 0o777) == 0o600
    assert set(record["collection"]["uploaded"]) == {"0", "1", "2"}
