"""Fleets bigger than a demo, on one machine: four scenarios, each printing its figures.

* `deployed`: a real SuperLink with N SuperNodes on 127.0.0.1 (`fedmsr device start`
  each), `fedmsr run --superlink` with check-in, training and SecAgg+, for each fleet size
  in `--sizes` (default 3 and 20) at equal per-device training; per-round wall time and
  the ratio of each size's round to the smallest's.
* `simulated`: Flower's simulation engine with 1,000 virtual devices and Poisson client
  sampling at q = 0.02 (central DP's sampler, `--dp central --client-sample-rate`) against
  a 20-device fleet at q = 1 (about as many devices train per round), the server probing
  20 devices' held-out clips in both (`--probe-devices`); per-round wall time, the ratio,
  and the peak memory of the run and every process under it (Ray's included).
* `registry`: `fedmsr fleet enroll --count 1000`, a SuperLink and `fedmsr fleet sync`
  (1,000 keys), then a 4-round simulated run over the registry's 1,000 devices at
  q = 0.02 during which 10 devices are revoked (once round 1 is in the history): none of
  them trains in a round begun after that, their keys are unregistered at once, and a
  second sync has nothing to do.
* `ledger`: the registry under load (`--db`, PostgreSQL by default): 1,000 devices x 100
  rounds of DP ledger rows written through the ledger's own reserve/commit path (in a
  scratch schema, dropped afterwards), then the time of `fedmsr budget show` (every
  device's PLD epsilon), of one round's selection pre-check (`privacy_ledger.eligible`)
  and of a device's history query, with its query plan.

Run: `python scripts/scale_fleet.py deployed|simulated|registry|ledger [options]`. Every
server it starts binds 127.0.0.1 and is stopped by PID before it returns. The small
versions of these scenarios run in the test suite (tests/test_scale.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from bench.deployed_round import (  # noqa: E402
    FEDMSR,
    RUN_S,
    STARTUP_S,
    EngineRun,
    Processes,
    Variant,
    bench_env,
    deployed,
    history,
    run_cli,
    superlink_answers,
    wait_until,
)
from fl_server import deployment  # noqa: E402

#: Equal per-device training in every scenario: a small but real local round.
TRAINING = ["--clips-per-day", "4", "--days", "2"]


def print_rounds(runs: list[EngineRun]) -> None:
    base = runs[0]
    print(f"{'round':>5} " + " ".join(f"{r.engine:>24}" for r in runs))
    for index, row in enumerate(base.rounds):
        cells = []
        for run in runs:
            wall = run.rounds[index]["wall_s"]
            ratio = f" ({wall / row['wall_s']:5.2f}x)" if run is not base else ""
            cells.append(f"{wall:8.2f}{ratio}")
        print(f"{row['round']:>5} " + " ".join(f"{c:>24}" for c in cells))
    for run in runs[1:]:
        ratio = statistics.median(r["wall_s"] for r in run.rounds) / statistics.median(
            r["wall_s"] for r in base.rounds)
        print(f"median round {run.engine} / {base.engine}: {ratio:.2f}x")


# -- deployed ------------------------------------------------------------------------------


def scenario_deployed(args: argparse.Namespace) -> None:
    sizes = sorted(int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="fedmsr-scale-") as name:
        tmp = Path(name)
        variants = [Variant(f"n{n}", n, (), ("--devices", str(n), "--rounds", str(args.rounds),
                                              *TRAINING, "--secure-aggregation",
                                              "--fleet-wait", "600", "--reply-timeout", "600"))
                    for n in sizes]
        runs = deployed(tmp, bench_env(tmp), max(sizes), variants)
    print(f"\n== deployed: {', '.join(map(str, sizes))} SuperNodes, {args.rounds} rounds, "
          "check-in + training + SecAgg+ ==")
    for run in runs:
        for row in run.rounds:
            assert row["aborted"] is None, f"{run.engine} round {row['round']}: {row['aborted']}"
        print(f"{run.engine}: devices per round "
              + ", ".join(str(len(r["devices"])) for r in run.rounds)
              + f"; SecAgg+ dropouts {[r['secagg_dropouts'] for r in run.rounds]}")
    print_rounds(runs)


# -- simulated -----------------------------------------------------------------------------


def descendants(pid: int) -> set[int]:
    """`pid` and every process under it (by parent PID: Ray starts its own sessions)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo.extend(children.get(current, []))
    return found


class PeakMemory:
    """Peak summed RSS of a process and everything under it, sampled every 0.5 s."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            total = 0
            for pid in descendants(self.pid):
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
                except OSError:
                    continue
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def simulated_run(tmp: Path, env: dict[str, str], name: str, args: list[str]
                  ) -> tuple[EngineRun, int]:
    log = (tmp / f"{name}.log").open("w")
    started = time.perf_counter()
    proc = subprocess.Popen([*FEDMSR, "run", "--run-id", name, *args], cwd=tmp, env=env,  # noqa: S603
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    memory = PeakMemory(proc.pid)
    code = proc.wait(timeout=RUN_S)
    peak = memory.stop()
    if code != 0:
        raise SystemExit(f"run {name} failed ({code}):\n{(tmp / f'{name}.log').read_text()[-3000:]}")
    return EngineRun(name, history(tmp / "runs" / name), time.perf_counter() - started), peak


def scenario_simulated(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="fedmsr-scale-") as name:
        tmp = Path(name)
        env = {k: v for k, v in bench_env(tmp).items() if k != "FEDMSR_DB"}
        # Equal work beside the fleet's size: the server probes on 20 devices' clips in both.
        common = ["--rounds", str(args.rounds), *TRAINING, "--dp", "central", "--seed", "1",
                  "--probe-devices", str(args.baseline)]
        small, small_peak = simulated_run(tmp, env, f"n{args.baseline}", [
            "--devices", str(args.baseline), "--client-sample-rate", "1", *common])
        big, big_peak = simulated_run(tmp, env, f"n{args.devices}", [
            "--devices", str(args.devices), "--client-sample-rate", str(args.rate), *common])
    print(f"\n== simulated: {args.devices} devices at q = {args.rate} against "
          f"{args.baseline} at q = 1, {args.rounds} rounds, central DP ==")
    for run, peak in ((small, small_peak), (big, big_peak)):
        print(f"{run.engine}: trained per round {[len(r['devices']) for r in run.rounds]}, "
              f"check-in s {[round(r['checkin_s'], 2) for r in run.rounds]}, "
              f"peak memory {peak / 2**30:.2f} GiB, whole run {run.wall_s:.1f} s")
    print_rounds([small, big])


# -- registry ------------------------------------------------------------------------------


def scenario_registry(args: argparse.Namespace) -> None:
    from fl_server import revocation

    revoked = [f"dev-{i}" for i in range(0, args.devices, args.devices // args.revoke)][
        :args.revoke]
    with tempfile.TemporaryDirectory(prefix="fedmsr-scale-") as name:
        tmp = Path(name)
        env = bench_env(tmp)
        flwr_home = Path(env["FLWR_HOME"])
        port = deployment.free_port()
        timings = {}
        for step, cli in (("pki init", ["pki", "init", "--pki-dir", "pki"]),
                          ("db upgrade", ["db", "upgrade"]),
                          (f"fleet enroll --count {args.devices}",
                           ["fleet", "enroll", "--count", str(args.devices), "--prefix", "dev-",
                            "--superlink", f"127.0.0.1:{port}"])):
            start = time.perf_counter()
            run_cli(cli, tmp, env)
            timings[step] = time.perf_counter() - start
        link, run = Processes(tmp, env), Processes(tmp, env)
        try:
            link.start(["superlink", "start", "--pki-dir", "pki", "--port", str(port)],
                       "superlink.log")
            wait_until(lambda: superlink_answers(flwr_home), STARTUP_S, "the SuperLink")
            start = time.perf_counter()
            synced = run_cli(["fleet", "sync"], tmp, env, timeout=RUN_S)
            timings["fleet sync"] = time.perf_counter() - start
            assert f"registered {args.devices} key(s)" in synced, synced
            proc = run.start(["run", "--run-id", "fleet", "--devices", str(args.devices),
                              "--rounds", str(args.rounds), *TRAINING, "--dp", "central",
                              "--client-sample-rate", str(args.rate), "--probe-devices", "20"],
                             "run.log")
            run_dir = tmp / "runs" / "fleet"
            wait_until(lambda: (run_dir / "history.json").exists() or proc.poll() is not None,
                       RUN_S, "round 1")
            # What `fedmsr fleet revoke` does, in process: the registry, then the SuperLink.
            start = time.perf_counter()
            url = env["FEDMSR_DB"]
            for device in revoked:
                record = revocation.revoke(url, device, "scale test")
                deployment.unregister_device(url, record["id"], flwr_home)
            timings[f"revoke {len(revoked)} (registry + SuperLink)"] = time.perf_counter() - start
            finished_before = len(history(run_dir))
            code = proc.wait(timeout=RUN_S)
            assert code == 0, (tmp / "run.log").read_text()[-3000:]
            rows = history(run_dir)
            start = time.perf_counter()
            again = run_cli(["fleet", "sync"], tmp, env, timeout=RUN_S)
            timings["fleet sync again"] = time.perf_counter() - start
            nodes = deployment.online_nodes(flwr_home)
        finally:
            run.stop_all()
            link.stop_all()
    indices = {int(d.split("-")[1]) for d in revoked}
    # A round in flight while the revocations went through may keep an update screened
    # before them; every round that started after them must not have any.
    after = rows[finished_before + 1:]
    print(f"\n== registry: {args.devices} enrolled devices, {len(revoked)} revoked after "
          f"round {finished_before} of a {args.rounds}-round simulated run ==")
    for step, seconds in timings.items():
        print(f"{step:<36} {seconds:8.2f} s")
    print(f"trained per round: {[len(r['devices']) for r in rows]}; revoked devices that "
          f"trained in the {len(after)} round(s) begun after the revocations: "
          f"{sorted(set().union(*(set(r['devices']) & indices for r in after)))}")
    print(f"second sync: {again.strip().splitlines()[-1]}")
    print(f"SuperLink nodes: {sum(1 for s in nodes.values() if s != 'unregistered')} "
          f"registered, {sum(1 for s in nodes.values() if s == 'unregistered')} unregistered")
    assert after, "the run ended before a round began after the revocations: use more rounds"
    assert not any(set(r["devices"]) & indices for r in after), \
        "a revoked device trained after its revocation"
    assert sum(1 for s in nodes.values() if s == "unregistered") >= len(revoked)
    assert "registered 0 key(s), unregistered 0" in again, again


# -- ledger --------------------------------------------------------------------------------


def scenario_ledger(args: argparse.Namespace) -> None:
    from fl_server.registry.scratch import scratch_registry

    with scratch_registry(args.db, args.postgres, prefix="fedmsr_scale") as url:
        _ledger_under_load(url, args)


def _ledger_under_load(url: str, args: argparse.Namespace) -> None:
    from sqlalchemy import select, text

    from fl_server import privacy_ledger
    from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
    from fl_server.registry.db import get_engine, session_scope, upgrade
    from fl_server.registry.models import Device
    from privacy.accounting import DpEvent

    upgrade(url)
    with tempfile.TemporaryDirectory(prefix="fedmsr-scale-") as bundles:
        enroll(url, [DeviceSpec(f"load-{i}") for i in range(args.devices)],
               BundleOptions(bundles_dir=Path(bundles)))
    with session_scope(url) as session:
        ids = list(session.scalars(select(Device.id).order_by(Device.id)))
    event = DpEvent(0.02, 1.0, 1)  # a central-DP round at q = 0.02, charged to every device
    start = time.perf_counter()
    for number in range(1, args.rounds + 1):
        releases = [privacy_ledger.Release(d, event) for d in ids]
        reservation = privacy_ledger.reserve(url, "load", number, releases, 1e-5, None)
        assert not reservation.refused, reservation.refused[:3]
        privacy_ledger.commit(url, "load", number, reservation.reserved)
    write_s = time.perf_counter() - start
    with get_engine(url).connect() as connection:
        rows = connection.execute(text("SELECT count(*) FROM privacy_events")).scalar_one()
    timings = {}
    start = time.perf_counter()
    states = privacy_ledger.budget_states(url, 1e-5)
    timings["budget show (every device, PLD)"] = time.perf_counter() - start
    start = time.perf_counter()
    env = {**os.environ, "FEDMSR_DB": url}
    shown = subprocess.run([*FEDMSR, "budget", "show"], env=env, capture_output=True,  # noqa: S603
                           text=True, timeout=RUN_S, check=True).stdout
    timings["`fedmsr budget show` (CLI, whole)"] = time.perf_counter() - start
    start = time.perf_counter()
    ok, refused = privacy_ledger.eligible(url, ids, event, 1e-5, 50.0)
    timings["selection pre-check (eligible)"] = time.perf_counter() - start
    start = time.perf_counter()
    privacy_ledger.device_events(url, ids[len(ids) // 2])
    timings["one device's history"] = time.perf_counter() - start
    print(f"\n== ledger: {args.devices} devices x {args.rounds} rounds on "
          f"{url.split('://')[0]} ==")
    print(f"{rows} ledger rows written through reserve + commit in {write_s:.1f} s "
          f"({write_s / args.rounds:.2f} s a round)")
    for step, seconds in timings.items():
        print(f"{step:<36} {seconds:8.3f} s")
    print(f"budget show lists {len(states)} devices ({len(shown.splitlines()) - 1} lines); "
          f"eligible {len(ok)}, refused {len(refused)}")
    if url.startswith("postgresql"):
        with get_engine(url).connect() as connection:
            plan = connection.execute(text(
                "EXPLAIN ANALYZE SELECT * FROM privacy_events WHERE device_id = :d "
                "ORDER BY id"), {"d": ids[0]}).scalars().all()
        print("query plan of a device's history:\n  " + "\n  ".join(plan))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="scenario", required=True)
    dep = sub.add_parser("deployed", help="N SuperNodes with SecAgg+, against 3")
    dep.add_argument("--sizes", default="3,20")
    dep.add_argument("--rounds", type=int, default=3)
    sim = sub.add_parser("simulated", help="1,000 virtual devices at q = 0.02")
    sim.add_argument("--devices", type=int, default=1000)
    sim.add_argument("--rate", type=float, default=0.02)
    sim.add_argument("--baseline", type=int, default=20)
    sim.add_argument("--rounds", type=int, default=3)
    reg = sub.add_parser("registry", help="enroll + sync 1,000, revoke 10 mid-run")
    reg.add_argument("--devices", type=int, default=1000)
    reg.add_argument("--revoke", type=int, default=10)
    reg.add_argument("--rate", type=float, default=0.02)
    reg.add_argument("--rounds", type=int, default=4)
    led = sub.add_parser("ledger", help="1,000 devices x 100 rounds of ledger rows")
    led.add_argument("--devices", type=int, default=1000)
    led.add_argument("--rounds", type=int, default=100)
    led.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    led.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                     help="the PostgreSQL server and database to make a scratch schema in")
    args = parser.parse_args()
    {"deployed": scenario_deployed, "simulated": scenario_simulated,
     "registry": scenario_registry, "ledger": scenario_ledger}[args.scenario](args)


if __name__ == "__main__":
    main()
