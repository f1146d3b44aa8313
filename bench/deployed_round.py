"""A deployed round against a simulated one: the same federation on both engines.

One process run, one registry (SQLite, in a temporary directory), the same enrolled devices,
rounds, model, data and seed:

1. Flower's deployment engine: `fedmsr superlink start` (TLS, SuperNode authentication),
   `fedmsr fleet sync`, one `fedmsr device start` per device (a real SuperNode each, on
   127.0.0.1), then `fedmsr run --superlink`;
2. Flower's simulation engine: `fedmsr run` with the same options.

It prints each round's wall time on both engines and their ratio, then where a deployed
round's time goes: the server's stages (check-in, train fan-out, aggregation, evaluation)
from the run's history, the devices' own training time, and the fixed costs a SuperNode
adds to every message, measured here: a ClientApp process's start and imports, per
message type, and Flower's polling intervals (the SuperNode's idle pull interval, the
SuperExec's task poll, the reply poll).

Run: `python bench/deployed_round.py [--devices 3 --rounds 3] [-- extra fedmsr run options]`.
Every process it starts binds 127.0.0.1 and is stopped by PID before it returns.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fl_server import deployment  # noqa: E402
from fl_server.launcher import group_members  # noqa: E402

FEDMSR = [sys.executable, "-m", "fl_server.cli"]
STARTUP_S = 120.0
RUN_S = 1800.0


@dataclass(frozen=True)
class EngineRun:
    """One engine's run: its history rows and the run's own wall time."""

    engine: str
    rounds: list[dict]
    wall_s: float


class Processes:
    """Every process the bench starts, each in its own session, stopped by PID."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env
        self.started: list[subprocess.Popen] = []

    def start(self, args: list[str], log: str) -> subprocess.Popen:
        proc = subprocess.Popen([*FEDMSR, *args], cwd=self.cwd, env=self.env,  # noqa: S603
                                stdout=(self.cwd / log).open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            members = [proc.pid, *group_members(proc.pid)]
            for pid in members:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            for pid in group_members(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def run_cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run([*FEDMSR, *args], cwd=cwd, env=env, capture_output=True,  # noqa: S603
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fedmsr {' '.join(args)} failed ({done.returncode}):\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def wait_until(condition, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def online(flwr_home: Path) -> list[str]:
    try:
        return [s for s in deployment.online_nodes(flwr_home).values() if s == "online"]
    except Exception:  # noqa: BLE001 - the SuperLink is still starting
        return []


def history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())


@dataclass(frozen=True)
class Variant:
    """One deployed run: its name (run id), SuperNodes, their options, the run's options."""

    name: str
    nodes: int
    device_args: tuple[str, ...]
    run_args: tuple[str, ...]


def deployed(tmp: Path, env: dict[str, str], enrolled: int,
             variants: list[Variant]) -> list[EngineRun]:
    """One PKI, registry and SuperLink for `enrolled` devices; per variant, its SuperNodes
    (`fedmsr device start`, devices 0..nodes-1) and one `fedmsr run --superlink`."""
    port = deployment.free_port()
    flwr_home = Path(env["FLWR_HOME"])
    for args in (["pki", "init", "--pki-dir", "pki"], ["db", "upgrade"],
                 ["fleet", "enroll", "--count", str(enrolled), "--prefix", "dev-",
                  "--superlink", f"127.0.0.1:{port}"]):
        run_cli(args, tmp, env)
    link = Processes(tmp, env)
    runs = []
    try:
        link.start(["superlink", "start", "--pki-dir", "pki", "--port", str(port)],
                   "superlink.log")
        wait_until(lambda: superlink_answers(flwr_home), STARTUP_S, "the SuperLink")
        run_cli(["fleet", "sync"], tmp, env)
        # The registry's public keys, which SecAgg+ devices check each other against,
        # distributed out of band (what the README's deployment block does).
        run_cli(["fleet", "identities", "--out", "identities.json"], tmp, env)
        for index in range(enrolled):
            shutil.copy(tmp / "identities.json", tmp / "devices" / f"dev-{index}")
        for variant in variants:
            nodes = Processes(tmp, env)
            try:
                for index in range(variant.nodes):
                    nodes.start(["device", "start", f"devices/dev-{index}",
                                 *variant.device_args], f"{variant.name}-dev-{index}.log")
                wait_until(lambda v=variant: len(online(flwr_home)) == v.nodes,
                           STARTUP_S * max(1, variant.nodes / 5),
                           f"{variant.nodes} SuperNodes online")
                started = time.perf_counter()
                run_cli(["run", "--superlink", f"127.0.0.1:{port}", "--run-id", variant.name,
                         *variant.run_args], tmp, env, timeout=RUN_S)
                wall = time.perf_counter() - started
            finally:
                nodes.stop_all()
            # The next variant's SuperNodes reuse the node ids: wait until these are off.
            wait_until(lambda: not online(flwr_home), STARTUP_S, "the SuperNodes to stop")
            runs.append(EngineRun(variant.name, history(tmp / "runs" / variant.name), wall))
    finally:
        link.stop_all()
    return runs


def bench_env(tmp: Path) -> dict[str, str]:
    """The environment of every command: a registry, Flower home and PATH of its own."""
    return {**os.environ, "FLWR_HOME": str(tmp / "flwr-home"),
            "FEDMSR_DB": f"sqlite:///{tmp / 'fedmsr.db'}", "NO_COLOR": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def superlink_answers(flwr_home: Path) -> bool:
    try:
        deployment.online_nodes(flwr_home)
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


def simulated(tmp: Path, env: dict[str, str], run_args: list[str],
              name: str = "simulated") -> EngineRun:
    started = time.perf_counter()
    run_cli(["run", "--run-id", name, *run_args], tmp, env, timeout=RUN_S)
    return EngineRun(name, history(tmp / "runs" / name),
                     time.perf_counter() - started)


def messages_per_node(tmp: Path, name: str, devices: int) -> dict[str, int]:
    """Messages each SuperNode pulled, by type (its log's "Receiving:" lines), summed."""
    counts: dict[str, int] = {}
    for index in range(devices):
        for line in (tmp / f"{name}-dev-{index}.log").read_text().splitlines():
            if "Receiving:" in line and "message" in line:
                kind = line.split("Receiving:")[1].split("message")[0].strip()
                counts[kind] = counts.get(kind, 0) + 1
    return counts


def import_seconds(statement: str, repeats: int = 3) -> float:
    """Median wall time of a fresh interpreter that runs `statement` (a process start)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], cwd=ROOT, check=True)  # noqa: S603
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_rounds(runs: list[EngineRun]) -> None:
    sim = runs[-1]
    print("\n== per-round wall time (s), and each against the simulated round ==")
    print(f"{'round':>5} " + " ".join(f"{r.engine:>22}" for r in runs))
    for index, base in enumerate(sim.rounds):
        cells = []
        for run in runs:
            wall = run.rounds[index]["wall_s"]
            cells.append(f"{wall:8.2f}" + (f" ({wall / base['wall_s']:6.2f}x)"
                                           if run is not sim else " " * 10))
        print(f"{base['round']:>5} " + " ".join(f"{c:>22}" for c in cells))
    for run in runs[:-1]:
        ratios = [d["wall_s"] / s["wall_s"] for d, s in zip(run.rounds, sim.rounds,
                                                              strict=True)]
        print(f"median ratio {run.engine} / simulated: {statistics.median(ratios):.2f}x"
              f"  (whole run, start-up included: {run.wall_s:.1f} s vs {sim.wall_s:.1f} s)")


def print_breakdown(runs: list[EngineRun]) -> None:
    print("\n== where a round's time goes (s, median over rounds) ==")
    keys = [("check-in", "checkin_s"), ("train fan-out", "train_phase_s"),
            ("  of it, slowest device's training", "client_train_s_max"),
            ("aggregation", "aggregate_s"), ("evaluation (devices + server probes)", "eval_s"),
            ("round", "wall_s")]
    print(f"{'stage':<38} " + " ".join(f"{r.engine:>12}" for r in runs))
    for label, key in keys:
        print(f"{label:<38} " + " ".join(
            f"{statistics.median(row[key] for row in r.rounds):12.2f}" for r in runs))


def print_fixed_costs(tmp: Path, runs: list[EngineRun], devices: int) -> None:
    print("\n== fixed costs of one message on a stock SuperNode (measured here) ==")
    base = import_seconds("pass")
    flower = import_seconds("import flwr.supernode.runtime.run_clientapp")
    checkin = import_seconds("import fl_client.client_app; "
                             "from fl_client.checkin_handler import checkin")
    train = import_seconds("import fl_client.client_app; import fl_client.local_round")
    print(f"interpreter start                          {base:6.2f}")
    print(f"+ Flower's flwr-clientapp imports           {flower:6.2f}")
    print(f"+ fedmsr ClientApp, check-in handler        {checkin:6.2f}")
    print(f"+ fedmsr ClientApp, train handler           {train:6.2f}")
    from fl_client import supernode_polling, warm_clientapp

    print("Flower's polls (stock): SuperNode idle pull 3.0 s (hard-coded in "
          "flwr.supernode.start_client_internal), reply poll 0.5 s, SuperExec task poll "
          "1.0 s. fedmsr's SuperNode: idle pull "
          f"{supernode_polling.ACTIVE_PULL_S} s for {supernode_polling.ACTIVE_FOR_S:.0f} s "
          f"after a message, reply poll {supernode_polling.REPLY_POLL_S} s, warm SuperExec "
          f"task poll {warm_clientapp.TASK_POLL_S} s, ClientApps forked (no start-up).")
    for run in runs[:-1]:
        counts = messages_per_node(tmp, run.engine, devices)
        print(f"{run.engine}: messages pulled by the {devices} SuperNodes, by type: "
              + ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-stock", action="store_true",
                        help="skip the run on Flower's stock SuperNodes")
    parser.add_argument("extra", nargs="*", help="more `fedmsr run` options, after --")
    args = parser.parse_args()
    run_args = ["--devices", str(args.devices), "--rounds", str(args.rounds),
                "--clips-per-day", "4", "--days", "2", *args.extra]
    variants = [Variant("deployed", args.devices, (), tuple(run_args))]
    if not args.no_stock:
        variants.append(Variant("stock", args.devices, ("--stock",), tuple(run_args)))
    with tempfile.TemporaryDirectory(prefix="fedmsr-deployed-") as name:
        tmp = Path(name)
        env = bench_env(tmp)
        runs = [*deployed(tmp, env, args.devices, variants), simulated(tmp, env, run_args)]
        print(f"fedmsr run {' '.join(run_args)}")
        print_rounds(runs)
        print_breakdown(runs)
        print_fixed_costs(tmp, runs, args.devices)


if __name__ == "__main__":
    main()
