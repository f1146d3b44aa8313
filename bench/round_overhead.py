"""Where a simulated round's wall time goes, against the clients' training compute in it.

Two measurements in one process:

1. A real fedmsr federation (the `fedmsr run` launcher, Flower's simulation engine): per
   round, wall time vs the sum (and max) of the devices' own `train_seconds`, with the
   phases (check-in, train fan-out, aggregation, held-out probes) broken out. The ideal
   train phase on P parallel actors is about sum / P.
2. Bare Flower, a ClientApp that answers at once: Flower's own `Grid.send_and_receive`
   vs fedmsr's `send_and_collect` (geometric back-off instead of a fixed poll interval)
   for the same no-op round — the fixed cost of a round trip — in the in-process
   simulation engine and through a real SuperLink in simulation mode (`bench/noop_app`).

Run: `python bench/round_overhead.py [--devices 8 --rounds 4]`. Prints ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def federation_breakdown(devices: int, rounds: int) -> list[dict]:
    from fl_server.config import RunConfig
    from fl_server.history import read_history
    from fl_server.launcher import launch_simulation, prepare_new_run

    with tempfile.TemporaryDirectory() as tmp:
        cfg = prepare_new_run(RunConfig(devices=devices, rounds=rounds, runs_dir=tmp,
                                        run_id="bench").validate())
        status = launch_simulation(cfg)
        if status.status != "completed":
            raise SystemExit(f"federation failed: {status.reason}")
        return [record.to_json() for record in read_history(cfg.run_dir())]


def bare_flower_round_trip(nodes: int, repeats: int) -> dict[str, list[float]]:
    from flwr.app import Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from strategies.messaging import send_and_collect, wait_for_nodes

    client = ClientApp()

    @client.train()
    def _noop(msg: Message, context: Context) -> Message:  # noqa: ARG001
        return Message(RecordDict({"m": MetricRecord({"ok": 1})}), reply_to=msg)

    times: dict[str, list[float]] = {"flower": [], "fedmsr": []}
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:  # noqa: ARG001
        ids = wait_for_nodes(grid, nodes, 60)

        def msgs() -> list[Message]:
            return [Message(RecordDict(), message_type="train", dst_node_id=n) for n in ids]

        send_and_collect(grid, msgs(), 120)  # warm the actors up
        for _ in range(repeats):
            for name, fn in (("flower", lambda: list(grid.send_and_receive(msgs()))),
                             ("fedmsr", lambda: send_and_collect(grid, msgs(), 120))):
                start = time.perf_counter()
                replies = fn()
                times[name].append(time.perf_counter() - start)
                assert len(replies) == len(ids)

    run_simulation(server_app=server, client_app=client, num_supernodes=nodes,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": os.cpu_count(), "num_gpus": 0,
                                                 "logging_level": 40}})
    return times


def superlink_round_trip(nodes: int, repeats: int) -> dict[str, list[float]]:
    """The no-op app of bench/noop_app on a real SuperLink in simulation mode."""
    import json
    import shutil
    import signal
    import subprocess
    import urllib.request

    port, control = 39291, 39293
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "flwr-home"
        home.mkdir()
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
            f'address = "127.0.0.1:{port}"\ninsecure = true\n')
        app = Path(tmp) / "app"
        shutil.copytree(Path(__file__).parent / "noop_app", app,
                        ignore=shutil.ignore_patterns("__pycache__"))
        out = Path(tmp) / "times.json"
        bin_dir = Path(sys.executable).parent  # flower-superlink starts flower-superexec by name
        env = {**os.environ, "FLWR_HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        link = subprocess.Popen(  # noqa: S603
            [str(bin_dir / "flower-superlink"), "--simulation", "--insecure",
             "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
             "--port", str(port), "--control-api-address", f"127.0.0.1:{control}",
             "--database", str(home / "state.db")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            subprocess.run(  # noqa: S603
                [str(bin_dir / "flwr"), "run", str(app), "--stream",
                 "--federation-config", f"num-supernodes={nodes}",
                 "-c", f"repeats={repeats} nodes={nodes} out='{out}'"],
                env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                timeout=600)
            return json.loads(out.read_text())
        finally:
            link.send_signal(signal.SIGTERM)
            link.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    parallel = min(args.devices, os.cpu_count() or 1)

    rows = federation_breakdown(args.devices, args.rounds)
    print(f"\n== fedmsr federation: {args.devices} devices, {parallel} parallel actors ==")
    print(f"{'round':>5} {'wall s':>7} {'clients sum':>11} {'ideal':>6} {'wall/ideal':>10} "
          f"{'checkin':>7} {'train':>6} {'aggr':>5} {'eval':>5}")
    steady = []
    for r in rows:
        ideal = r["client_train_s_sum"] / parallel
        ratio = r["wall_s"] / ideal
        print(f"{r['round']:>5} {r['wall_s']:7.2f} {r['client_train_s_sum']:11.2f} {ideal:6.2f} "
              f"{ratio:10.2f} {r['checkin_s']:7.2f} {r['train_phase_s']:6.2f} "
              f"{r['aggregate_s']:5.2f} {r['eval_s']:5.2f}")
        if r["round"] > 1:
            steady.append(ratio)
    if steady:
        print(f"median wall / (client compute / {parallel}) after round 1: "
              f"{statistics.median(steady):.2f}x  (round 1 includes Ray actor start-up)")

    _report_round_trip(f"bare no-op round trip, in-process engine, {args.devices} nodes",
                       bare_flower_round_trip(args.devices, args.repeats),
                       "Flower's engine itself dispatches on a 0.1 s tick "
                       "(vce_api.add_messages_to_queue), so both collectors wait for it")
    _report_round_trip(f"same no-op round, SuperLink in simulation mode, {args.devices} nodes",
                       superlink_round_trip(args.devices, args.repeats),
                       "this ServerApp also runs on an in-memory grid; Flower's fixed 3 s poll "
                       "is HttpGrid's (deployment mode), where a fedmsr round makes three "
                       "exchanges: check-in, train, evaluate")


def _report_round_trip(title: str, times: dict[str, list[float]], note: str) -> None:
    flower, ours = (statistics.median(values) for values in times.values())
    print(f"\n== {title}, median of {len(times['flower'])} ==")
    print(f"flower Grid.send_and_receive : {flower * 1000:8.1f} ms")
    print(f"fedmsr send_and_collect      : {ours * 1000:8.1f} ms")
    print(f"ratio flower / fedmsr        : {flower / ours:8.2f}x")
    print(f"({note})")

if __name__ == "__main__":
    main()
