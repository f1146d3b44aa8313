"""The shuffler as its own process: `fedmsr shuffler keygen` / `start`, its HTTP API on
127.0.0.1, and the CLI's one-line refusals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fl_server.cli import main
from fl_server.shuffler_service import ShufflerClient, ShufflerError
from privacy.shuffle.records import (
    InnerRecord,
    inner_context,
    new_pseudonym,
    open_inner,
    outer_context,
    seal_batch,
)
from privacy.shuffle.sealed import generate_private_key, public_bytes
from tests.helpers import EXIT_WAIT_S

ANALYZER = generate_private_key()
LABEL = "svc-run/3"
INNER_CTX = inner_context("svc-run", 3, "cd" * 32)


@pytest.fixture
def service(tmp_path):
    """A real `fedmsr shuffler start` process on a free loopback port; stopped by PID."""
    key = tmp_path / "shuffler.pem"
    assert main(["shuffler", "keygen", "--out", str(key)]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "fl_server.cli", "shuffler", "start",
                             "--key", str(key), "--port", "0", "--min-crowd", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+) .*public key ([0-9a-f]{64})",
                          line)
        assert match, f"no URL in {line!r} (stderr: {proc.stderr.read() if proc.stderr else ''})"
        yield ShufflerClient(match.group(1)), bytes.fromhex(match.group(2))
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=EXIT_WAIT_S)


def blob(shuffler_public: bytes, real: int) -> bytes:
    records = [InnerRecord(os.urandom(40), None, new_pseudonym(), i < real) for i in range(3)]
    return seal_batch(records, public_bytes(ANALYZER), shuffler_public, INNER_CTX,
                      outer_context(LABEL))


def test_service_round_trip_refusals_and_release(service):
    client, printed_key = service
    info = client.info()
    assert info.public_key == printed_key and info.min_crowd == 2
    assert client.submit(LABEL, "101", blob(info.public_key, 1)) == 1
    with pytest.raises(ShufflerError, match="sender 101 already sent a batch"):
        client.submit(LABEL, "101", blob(info.public_key, 2))
    with pytest.raises(ShufflerError, match="does not open"):
        client.submit(LABEL, "103", b"\0" * 200)
    assert client.submit(LABEL, "102", blob(info.public_key, 3)) == 2
    released = client.release(LABEL)
    assert released.senders == 2 and len(released.records) == 6
    opened = [open_inner(ANALYZER, c, INNER_CTX) for c in released.records]
    assert sum(r.real for r in opened) == 4
    with pytest.raises(ShufflerError, match="already released"):
        client.release(LABEL)


def test_service_refuses_below_min_crowd(service):
    client, key = service
    client.submit(LABEL, "1", blob(key, 3))
    with pytest.raises(ShufflerError, match=r"1 sender\(s\), fewer than min-crowd 2: nothing"):
        client.release(LABEL)


def test_unreachable_shuffler_is_one_line():
    with pytest.raises(ShufflerError, match="unreachable") as info:
        ShufflerClient("http://127.0.0.1:9", timeout_s=5).info()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "0", "--min-crowd", "1"], "error: --min-crowd: must be >= 2"),
    (["--port", "0", "--min-crowd", "2", "--host", "0.0.0.0"], "error: --host: the shuffler "
     "binds loopback only"),
    (["--port", "70000", "--min-crowd", "2"], "error: --port: must be 0..65535"),
])
def test_start_refuses_bad_input(tmp_path, capsys, args, message):
    key = tmp_path / "k.pem"
    assert main(["shuffler", "keygen", "--out", str(key)]) == 0
    assert main(["shuffler", "start", "--key", str(key), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err


def test_keygen_and_key_refusals(tmp_path, capsys):
    key = tmp_path / "k.pem"
    assert main(["shuffler", "keygen", "--out", str(key)]) == 0
    assert (key.stat().st_mode & 0o777) == 0o600
    assert main(["shuffler", "keygen", "--out", str(key)]) == 2
    assert "error: --out:" in capsys.readouterr().err
    bad = tmp_path / "bad.pem"
    bad.write_text("hello")
    assert main(["shuffler", "start", "--key", str(bad), "--port", "0", "--min-crowd", "2"]) == 2
    assert "error: --key:" in capsys.readouterr().err
    missing = Path(tmp_path / "none.pem")
    assert main(["shuffler", "start", "--key", str(missing), "--port", "0",
                 "--min-crowd", "2"]) == 2
    assert "cannot read" in capsys.readouterr().err
