"""Deployment on a real SuperLink, all on 127.0.0.1: PKI, TLS, SuperNode authentication
with enrollment keys, refusal of an unenrolled key, revocation cutting a SuperNode off for
good. Every process started here is stopped by PID (with its children) in `finally`."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fl_server import deployment, enrollment, revocation
from fl_server.launcher import group_members
from fl_server.registry.devices import show_device
from tests.helpers import FEDMSR, SMALL, fedmsr, history

STARTUP_S = 90.0
#: A deployed round spawns a ClientApp process per message on each SuperNode: minutes
#: on a loaded 2-core machine.
RUN_S = 480.0
#: The deployed run's round deadline: well above a 2-device round on a loaded machine
#: (about 30 s) plus the 15 s freeze; a killed SuperNode ends its round sooner (offline).
ROUND_TIMEOUT_S = 150
FREEZE_S = 15.0


def children(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc), deepest last."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, parent in parents.items() if parent == current]
        found.extend(kids)
        frontier.extend(kids)
    return found


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process and everything it started, by PID; SIGKILL what lingers."""
    pids = [proc.pid, *children(proc.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            deadline = time.monotonic() + 10
            while any(Path(f"/proc/{p}").exists() for p in pids[1:]) and \
                    time.monotonic() < deadline:
                time.sleep(0.1)


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    handle = log.open("w")
    proc = subprocess.Popen([*FEDMSR, *args], cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                            env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    proc.log_path = log  # type: ignore[attr-defined]  # for the failure message
    return proc


def _tail(proc: subprocess.Popen, chars: int = 3000) -> str:
    log = getattr(proc, "log_path", None)
    return "" if log is None or not log.exists() else log.read_text()[-chars:]


def wait_until(condition, timeout_s: float, what: str, alive: list[subprocess.Popen] = ()):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        for proc in alive:
            assert proc.poll() is None, f"{proc.args} exited with {proc.returncode} while " \
                                        f"waiting for {what}; its log ends:\n{_tail(proc)}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def nodes_or_empty(flwr_home: Path) -> dict[str, str]:
    try:
        return deployment.online_nodes(flwr_home)
    except Exception:  # noqa: BLE001 - the SuperLink is still starting
        return {}


# On PostgreSQL only: a deployed run costs minutes on 2 cores (a fresh ClientApp process per
# message), and every registry code path it uses is tested on both backends elsewhere
# (test_registry*, test_enrollment); the README deployment test runs on SQLite.
@pytest.mark.slow
@pytest.mark.extended  # the README deployment block's test is the default run's sibling
@pytest.mark.parametrize("registry_url", ["postgresql"], indirect=True)
def test_deployed_run_with_authenticated_supernodes_and_revocation_mid_run(
        registry_url, tmp_path, monkeypatch) -> None:
    """PKI, SuperLink, 3 enrolled SuperNodes, an unenrolled 4th refused, a 3-round
    `fedmsr run --superlink` (issues 3 and 8):

    * after round 1 dev-1 is revoked: it is out of round 2 on, its SuperNode exits, and its
      key can never be registered again;
    * round 2: dev-2's SuperNode is SIGKILLed right after it pulled its train message: the
      SuperLink marks the node offline, the round closes with dev-0's update alone; the
      SuperNode started again once the node is offline reconnects under the same node id;
    * round 3: dev-2 is back, and its SuperNode freezes (SIGSTOP: no heartbeat, no reply)
      right after it pulled its train message, for 15 s: its update still counts."""
    flwr_home = tmp_path / "flwr-operator"
    monkeypatch.setenv("FLWR_HOME", str(flwr_home))
    monkeypatch.setenv("FEDMSR_DB", registry_url)
    port = deployment.free_port()
    for args in (["pki", "init", "--pki-dir", "pki"], ["db", "upgrade"],
                 ["fleet", "enroll", "--count", "3", "--prefix", "dev-",
                  "--superlink", f"127.0.0.1:{port}"]):
        result = fedmsr(*args, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stderr
    outsider = _outsider_bundle(tmp_path, port)
    procs: list[subprocess.Popen] = []
    try:
        superlink = start(["superlink", "start", "--pki-dir", "pki", "--port", str(port)],
                          tmp_path, tmp_path / "superlink.log")
        procs.append(superlink)
        wait_until(lambda: _listening(port) and _answers(flwr_home), STARTUP_S,
                   "the SuperLink", [superlink])
        # A sync interrupted after the SuperLink took dev-2's key but before the registry
        # recorded it: the next sync adopts that node (Flower refuses a key twice).
        interrupted = deployment.register_key(_public_key(tmp_path, "dev-2"), flwr_home)
        result = fedmsr("fleet", "sync", cwd=tmp_path, timeout=300)
        assert result.returncode == 0 and "registered 3 key(s)" in result.stdout, result.stderr
        devices = {d["name"]: d for d in json.loads(
            fedmsr("fleet", "list", "--json", cwd=tmp_path).stdout)}
        node_of = {name: d["superlink_node_id"] for name, d in devices.items()}
        assert node_of["dev-2"] == interrupted
        assert set(deployment.online_nodes(flwr_home)) == set(node_of.values())
        supernodes = {}
        for name in sorted(node_of):
            supernodes[name] = start(["device", "start", f"devices/{name}"], tmp_path,
                                     tmp_path / f"{name}.log")
            procs.append(supernodes[name])
        intruder = start(["device", "start", str(outsider)], tmp_path, tmp_path / "outsider.log")
        procs.append(intruder)
        wait_until(lambda: sorted(nodes_or_empty(flwr_home).values()) == ["online"] * 3,
                   STARTUP_S, "3 SuperNodes online", [superlink, *supernodes.values()])
        # The unenrolled key is refused: its SuperNode gives up and exits non-zero.
        assert intruder.wait(timeout=STARTUP_S) != 0
        assert "Failed to activate SuperNode" in (tmp_path / "outsider.log").read_text()
        assert len(deployment.online_nodes(flwr_home)) == 3

        run = start(["run", "--superlink", f"127.0.0.1:{port}", "--devices", "3",
                     "--rounds", "3", "--round-timeout", str(ROUND_TIMEOUT_S), *SMALL,
                     "--run-id", "dep"], tmp_path, tmp_path / "run.log")
        procs.append(run)
        run_dir = tmp_path / "runs" / "dep"
        wait_until(lambda: (run_dir / "history.json").exists(), RUN_S, "round 1",
                   [run, superlink, *supernodes.values()])
        assert history(run_dir)[0]["devices"] == [0, 1, 2]
        # Revoked right after round 1 (in process: a CLI start-up would race round 2's
        # roll call): unregistered at once, so its SuperNode is cut off and exits.
        revoked = revocation.revoke(registry_url, "dev-1", "stolen")
        assert deployment.unregister_device(registry_url, revoked["id"], flwr_home)
        supernodes["dev-1"].wait(timeout=STARTUP_S)
        # Round 2: dev-2 pulled its train message; its SuperNode and ClientApp die at once.
        wait_until(lambda: _received(tmp_path / "dev-2.log", "train") == 2, RUN_S,
                   "dev-2 to pull round 2's train message",
                   [run, superlink, supernodes["dev-0"], supernodes["dev-2"]])
        signal_tree(supernodes["dev-2"], signal.SIGKILL)
        supernodes["dev-2"].wait(timeout=10)
        # Flower refuses to activate a node whose last session it still counts as online
        # (2 heartbeats, 60 s): a supervisor restarts the SuperNode after that.
        wait_until(lambda: nodes_or_empty(flwr_home).get(node_of["dev-2"]) == "offline",
                   RUN_S, "the SuperLink to mark dev-2 offline", [run, superlink])
        supernodes["dev-2"] = start(["device", "start", "devices/dev-2"], tmp_path,
                                    tmp_path / "dev-2-again.log")
        procs.append(supernodes["dev-2"])
        back = wait_until(lambda: _node_id(tmp_path / "dev-2-again.log"), STARTUP_S,
                          "dev-2 to reconnect", [run, supernodes["dev-2"]])
        assert back == str(node_of["dev-2"])  # the same node: its key, its registration
        # Round 3 (its check-in waits for the eligible dev-2): dev-2 pulled its train
        # message, then goes silent for 15 s (no heartbeat, no reply) and comes back.
        wait_until(lambda: _received(tmp_path / "dev-2-again.log", "train") == 1, RUN_S,
                   "dev-2 to pull round 3's train message", [run, supernodes["dev-2"]])
        signal_tree(supernodes["dev-2"], signal.SIGSTOP)
        time.sleep(FREEZE_S)
        signal_tree(supernodes["dev-2"], signal.SIGCONT)
        assert run.wait(timeout=RUN_S) == 0, ((tmp_path / "run.log").read_text()[-3000:]
                                              + (tmp_path / "superlink.log").read_text()[-3000:])
        rows = history(run_dir)
        assert [r["devices"] for r in rows] == [[0, 1, 2], [0], [0, 2]]
        assert [(r["sampled"], r["failed"]) for r in rows] == [(3, 0), (2, 1), (2, 0)]
        assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
        assert all(p.poll() is None for n, p in supernodes.items() if n != "dev-1")
        shown = {name: show_device(registry_url, name) for name in ("dev-0", "dev-1")}
        assert (shown["dev-0"]["rounds"], shown["dev-1"]["rounds"]) == (3, 1)
        status = deployment.online_nodes(flwr_home)
        assert node_of["dev-1"] not in status or status[node_of["dev-1"]] == "unregistered"
        # ... for good: the SuperLink refuses the revoked key, and sync does not try again.
        with pytest.raises(Exception, match="already in use"):
            deployment.register_key(_public_key(tmp_path, "dev-1"), flwr_home)
        result = fedmsr("fleet", "sync", cwd=tmp_path, timeout=300)
        assert result.returncode == 0 and "registered 0 key(s), unregistered 0" in result.stdout
        audit = json.loads(fedmsr("fleet", "audit", "--json", "--limit", "0",
                                  cwd=tmp_path).stdout)
        registered = [e for e in audit if e["action"] == "device.register"]
        assert sorted(e["detail"]["adopted"] for e in registered) == [False, False, True]
        assert [e["action"] for e in audit].count("device.unregister") == 1
    finally:
        for proc in reversed(procs):
            stop(proc)


def signal_tree(proc: subprocess.Popen, sig: signal.Signals) -> None:
    """Send `sig` to a process and all its descendants at once, by PID."""
    for pid in [proc.pid, *children(proc.pid)]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _received(log: Path, message_type: str) -> int:
    """How many `message_type` messages a SuperNode's log says it pulled."""
    return log.read_text().count(f"Receiving: {message_type} message")


def _node_id(log: Path) -> str | None:
    """The node id a SuperNode logs once the SuperLink accepted its key."""
    found = re.search(r"SuperNode ID: (\d+)", log.read_text())
    return found.group(1) if found else None


def _outsider_bundle(root: Path, port: int) -> Path:
    """A 4th device bundle whose key was never enrolled (same CA, same SuperLink)."""
    outsider = root / "outsider"
    outsider.mkdir()
    key = enrollment.generate_keypair()
    (outsider / enrollment.KEY_FILE).write_bytes(key.private_openssh)
    (outsider / enrollment.CA_FILE).write_bytes((root / "pki" / "ca.pem").read_bytes())
    (outsider / enrollment.INFO_FILE).write_text(json.dumps({
        "device_id": 999, "name": "outsider", "device_index": 3,
        "superlink": f"127.0.0.1:{port}"}))
    return outsider


def _public_key(root: Path, name: str) -> str:
    return json.loads((root / "devices" / name / enrollment.INFO_FILE).read_text())["public_key"]


def _answers(flwr_home: Path) -> bool:
    """The SuperLink answers the Flower CLI over TLS (and knows no node yet)."""
    try:
        return deployment.online_nodes(flwr_home) == {}
    except Exception:  # noqa: BLE001 - still starting
        return False


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_device_start_refuses_a_directory_that_is_not_a_bundle(tmp_path) -> None:
    result = subprocess.run([*FEDMSR, "device", "start", str(tmp_path)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: BUNDLE_DIR: ")
    assert "not a device bundle" in result.stderr and result.stderr.count("\n") == 1


def readme_deploy_block() -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    match = re.search(r"<!-- deploy:begin -->\s*```bash\n(.*?)```", text, re.DOTALL)
    assert match, "README lost its deployment block"
    return match.group(1)


@pytest.mark.slow
def test_readme_deployment_block_runs_as_written(tmp_path) -> None:
    """The README's commands, verbatim but for the port (a free one) and the homes."""
    port = str(deployment.free_port())
    script = readme_deploy_block().replace("39292", port)
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"),
           "FEDMSR_DB": f"sqlite:///{tmp_path / 'fedmsr.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # Its own session: whatever the script leaves behind (on failure too) shares the group
    # id, which is the PID of the shell we start, and is stopped by it.
    shell = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        stdout, stderr = shell.communicate(timeout=600)
        assert shell.returncode == 0, stdout[-3000:] + stderr[-3000:]
        assert "registered 3 key(s), unregistered 0" in stdout
        assert stdout.count("online") >= 3  # the `flwr supernode list` table
        runs = list((tmp_path / "runs").iterdir())
        assert len(runs) == 1 and f"completed {runs[0].name}" in stdout
        [row] = history(runs[0])
        assert row["devices"] == [0, 1, 2] and row["aborted"] is None
        # SecAgg+ on real SuperNodes: every device signed its round keys with its bundle key
        # and verified its neighbours against the distributed registry identities (a
        # failure there is a dropout, and the round would abort below the threshold).
        assert json.loads((runs[0] / "run.json").read_text())["secure_aggregation"] is True
        assert row["train_loss"] is None and row["secagg_dropouts"] == 0
        # Each SuperNode trained and evaluated on its own folder of real video (unlabelled:
        # no activity accuracy comes back, as it would from synthetic clips), and the
        # server probed on the operator's eval manifest.
        assert row["device_kl_bits"] is not None and row["device_activity_acc"] is None
        assert "footage: " in (tmp_path / "devices" / "cam-0.log").read_text()
        assert row["utility_chance"] is not None
        assert "its SuperNode is cut off" in stdout
        assert "Failed to activate SuperNode" not in (tmp_path / "devices" / "cam-0.log"
                                                      ).read_text()
        # The script stopped what it started: what is left of its process group (Flower's
        # SuperExec helpers notice their parent is gone) ends on its own.
        wait_until(lambda: not group_members(shell.pid), 60.0, "the script's processes to end")
    finally:
        try:
            os.killpg(shell.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shell.wait()


