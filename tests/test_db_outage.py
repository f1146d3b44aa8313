"""The registry's PostgreSQL unavailable mid-round (the fault suite).

The test runs its OWN PostgreSQL -- `initdb` in a temporary directory, its own free port on
127.0.0.1, `pg_ctl start/stop` -- and never touches the machine's shared server on 5432.
PostgreSQL refuses to run as root, so as root (CI) every server command runs as the
`postgres` OS user that Debian's package creates (`runuser -u postgres --`).

A `--dp local` registry-backed run on Flower's simulation engine (tests/faulty_devices.py
holds one device's reply until the test releases it, so "mid-round" is a state, not a
timing guess): after the ledger reserved the round and the train messages are out, the
database is stopped and started again; then the held reply is released.

The server carries on: its pool pings a connection before using it
(`fl_server/registry/db.py`, `pool_pre_ping`), so the connections the restart killed are
replaced instead of failing the ledger commit after the checkpoint (which is what happened
before). A database still down at commit time fails the run with a one-line error naming
the registry database, and `fedmsr run --resume` commits the checkpointed round
(tests/test_fault_injection.py, kill at `commit`). The ledger ends with exactly
one row per (device, round) sent a train message -- nothing lost, nothing doubled -- and
`fedmsr budget show` agrees with dp_accounting's recount.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fl_server.config import RunConfig
from fl_server.deployment import free_port
from fl_server.launcher import prepare_new_run
from fl_server.registry.db import dispose_engines
from fl_server.run_status import read_status
from tests.helpers import PATIENT_CONFIG, fedmsr, history, round_outcome
from tests.ledger_recount import epsilon_mismatches, ledger_rows, mismatches
from tests.test_fault_injection import local_event, start_faulty_engine, stop_group

pytestmark = pytest.mark.slow
DELTA = 1e-5
WAIT_S = 300.0


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's binaries (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if not found:
        pytest.fail("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin "
                    "(install Debian's postgresql package)")
    return found[-1].parent


class OwnPostgres:
    """A throw-away PostgreSQL server on 127.0.0.1:`port`, data in `root` (trust auth)."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.bin = root, free_port(), postgres_bin()
        self.data, self.log = root / "data", root / "server.log"
        self.as_owner: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse root
            if shutil.which("runuser") is None:
                pytest.fail("running as root, but `runuser` (util-linux) is missing: "
                            "PostgreSQL cannot be started as the postgres user")
            shutil.chown(root, user="postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.as_owner, *args], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, f"{args[0]}: {done.stdout[-1500:]}{done.stderr[-1500:]}"

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -F"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                  "-o", options, "-w", "-t", "120", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t",
                  "120", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    root = Path(tempfile.mkdtemp(prefix="fedmsr-pg-"))  # /tmp: reachable by `postgres`
    root.chmod(0o755)
    server = OwnPostgres(root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        dispose_engines()
        if server.running():
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def wait_until(condition, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll `condition`; fail if `proc` (when given) exits first or WAIT_S passes."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert proc is None or proc.poll() is None, \
            f"the engine exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def reserved_for(url: str, run_id: str, server_round: int) -> int:
    """How many of the round's releases are in the ledger (0 while the database is down)."""
    try:
        return sum(r.round_number == server_round for r in ledger_rows(url, run_id))
    except Exception:  # noqa: BLE001 - the database is restarting
        return 0


def release(run_dir: Path, device: int, server_round: int) -> None:
    path = run_dir / "test-release" / f"{device}-{server_round}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def test_postgres_down_mid_round_loses_and_doubles_no_ledger_row(
        own_postgres, tmp_path, monkeypatch) -> None:
    url = own_postgres.url
    for args in (["db", "upgrade"], ["fleet", "enroll", "--count", "3", "--prefix", "cam-"]):
        result = fedmsr("--db", url, *args, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stderr
    monkeypatch.setenv("FEDMSR_DB", url)
    monkeypatch.chdir(tmp_path)
    cfg = prepare_new_run(RunConfig(
        devices=3, rounds=1, seed=6, clips_per_day=4, days=2, dp_sgd=True, delta=DELTA,
        min_train_devices=2, runs_dir=str(tmp_path / "runs"), run_id="outage",
        **PATIENT_CONFIG).validate())
    dispose_engines()
    run_dir = cfg.run_dir()
    log = (tmp_path / "engine.log").open("w")
    proc = start_faulty_engine(run_dir, "2:hold@1", log=log, cwd=tmp_path)
    try:
        # Reserved and sent, cam-2's reply pending: the database goes away and comes back.
        wait_until(lambda: reserved_for(url, "outage", 1) == 3, "the round's reservation", proc)
        own_postgres.stop()
        assert reserved_for(url, "outage", 1) == 0  # really unavailable
        own_postgres.start()
        release(run_dir, 2, 1)
        proc.wait(timeout=WAIT_S)
    finally:
        stop_group(proc)
        log.close()
    status = read_status(run_dir)
    assert status is not None, (tmp_path / "engine.log").read_text()[-3000:]
    devices = ["cam-0", "cam-1", "cam-2"]
    event = local_event(cfg)
    # The pool pings before each checkout: the restart is invisible to the run.
    assert status.status == "completed", (status, (tmp_path / "engine.log").read_text()[-3000:])
    assert read_status(run_dir).status == "completed"
    assert [r["devices"] for r in history(run_dir)] == [[0, 1, 2]], [
        round_outcome(r) for r in history(run_dir)]
    rows = ledger_rows(url, "outage")
    assert mismatches(rows, [(d, 1) for d in devices], event) == []
    assert epsilon_mismatches(url, DELTA, dict.fromkeys(devices, 1), event) == []
