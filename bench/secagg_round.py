"""Round wall time with and without secure aggregation, through Flower's simulation engine.

    python bench/secagg_round.py [--devices 10 50 100] [--params 100000 1000000]
                                 [--repeats 3] [--no-flower]

`bench/secagg.py` times each party's CPU in isolation; this one times whole rounds as the
engine runs them (messages, serialization, the engine's dispatch, every device's protocol
work on the available cores). Local training is replaced on every path by the same
synthetic update (global + a fixed random delta of `--params` float32 values, weight 10),
so the figures isolate what aggregation costs a round; a real round adds its training time
to both sides, which only brings the ratios closer to 1.

Four rounds per size, each measured `--repeats` times after one warm-up, all in the same
process and on the same simulated fleet:

* ``plain``          - fedmsr's plaintext path: train messages with the global arrays, the
                       replies' weighted mean (what `fedmsr run` does without SecAgg);
* ``secagg``         - fedmsr's SecAgg+ (`strategies.secagg_workflow.secure_train_round`
                       with the production device handlers of `fl_client.secagg_handlers`):
                       four exchanges, the server learns only the weighted mean;
* ``flower-plain``   - Flower's legacy `DefaultWorkflow` + `FedAvg` fit round (reference);
* ``flower-secagg+`` - Flower's legacy `SecAggPlusWorkflow` (`secaggplus_mod` on the
                       clients) with the same number of neighbours and threshold: the
                       reference figure the issue asks for (legacy API only; its masks come
                       from NumPy's Mersenne Twister, flwrlabs/flower#7522).

`--train-cpu-s S` makes every device's synthetic training burn S CPU seconds on every
path (a real fedmsr device trains for about a second per round here: history.json's
`client_train_s_sum / sampled`), to see the ratio of a round that trains.

Ratios printed: secagg / plain (the issue's target is <= 1.5 at n = 50) and
flower-secagg+ / flower-plain.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

WEIGHT = 10
CLIP = 1.0
WHOAMI = "query.bench_whoami"
#: CPU seconds each device's synthetic 'training' burns (--train-cpu-s), the same on every path.
TRAIN_CPU_S = float(os.environ.get("FEDMSR_BENCH_TRAIN_CPU_S", "0"))


def burn_cpu(seconds: float) -> None:
    """Stand-in for local training's compute: busy for `seconds` of this thread's CPU."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


def synthetic_arrays(params: int, device: int | None) -> dict[str, np.ndarray]:
    """Global model = zeros; device d's update = a fixed uniform delta in [-0.5, 0.5]."""
    if device is None:
        return {"w": np.zeros(params, dtype=np.float32)}
    rng = np.random.default_rng(device)  # bench data only, not the protocol
    return {"w": rng.uniform(-0.5, 0.5, params).astype(np.float32)}


def fedmsr_client_app():
    """The production SecAgg+ device handlers around a synthetic 'training'."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from fl_client import secagg_handlers
    from fl_client.local_round import LocalRound
    from fl_client.node import device_index
    from privacy.wire.arrays import record_of
    from privacy.wire.keys import (
        ARRAYS_KEY,
        CONFIG_KEY,
        DEVICE_KEY,
        METRICS_KEY,
        SECAGG_ADVERTISE_ACTION,
        SECAGG_CONSISTENCY_ACTION,
        SECAGG_MASKED_ACTION,
        SECAGG_SHARE_ACTION,
        SECAGG_UNMASK_ACTION,
        WEIGHT_KEY,
    )

    app = ClientApp()

    def synthetic_round(config: ConfigRecord, global_arrays: dict[str, np.ndarray],
                        context: Context, discriminator: ArrayRecord | None = None) -> LocalRound:
        del discriminator  # the bench's stand-in trains nothing
        device = device_index(context)
        burn_cpu(TRAIN_CPU_S)
        params = int(global_arrays["w"].shape[0])
        update = {"w": synthetic_arrays(params, None)["w"] + synthetic_arrays(params, device)["w"]}
        return LocalRound(device=device, arrays=update,
                          metrics={"train_seconds": 0.0, "steps": 1.0}, weight=WEIGHT,
                          dp_event=None, echo={})

    def synthetic_train(msg: Message, context: Context) -> Message:
        global_arrays = {"w": msg.content[ARRAYS_KEY]["w"].numpy()}
        result = synthetic_round(msg.content[CONFIG_KEY], global_arrays, context)
        return Message(RecordDict({
            ARRAYS_KEY: record_of(result.arrays),
            METRICS_KEY: MetricRecord({**result.metrics, WEIGHT_KEY: result.weight}),
            DEVICE_KEY: ConfigRecord({"device": result.device}),
        }), reply_to=msg)

    def masked(msg: Message, context: Context) -> Message:
        return secagg_handlers.masked_round(msg, context, synthetic_round)

    @app.query("bench_whoami")
    def _whoami(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"who": ConfigRecord({"device": device_index(context)})}),
                       reply_to=msg)

    app.train()(synthetic_train)
    app.query(SECAGG_ADVERTISE_ACTION)(secagg_handlers.advertise)
    app.query(SECAGG_SHARE_ACTION)(secagg_handlers.share)
    app.train(SECAGG_MASKED_ACTION)(masked)
    app.query(SECAGG_CONSISTENCY_ACTION)(secagg_handlers.consistency)
    app.query(SECAGG_UNMASK_ACTION)(secagg_handlers.unmask)
    return app


def fedmsr_rounds(devices: int, params: int, repeats: int) -> dict[str, list[float]]:
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from privacy.secagg.graph import default_neighbours, default_threshold
    from privacy.wire.arrays import arrays_of, record_of
    from privacy.wire.keys import ARRAYS_KEY, CONFIG_KEY, WEIGHT_KEY
    from strategies.messaging import send_and_collect, wait_for_nodes
    from strategies.secagg_workflow import SecAggParams, secure_train_round

    times: dict[str, list[float]] = {"plain": [], "secagg": []}
    # where the simulated devices record the rounds they sent a masked input for
    state_root = Path(tempfile.mkdtemp(prefix="bench-secagg-state-"))
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        nodes = wait_for_nodes(grid, devices, 120)
        who = send_and_collect(grid, [Message(RecordDict(), message_type=WHOAMI, dst_node_id=n)
                                      for n in nodes], 120)
        device_of = {r.metadata.src_node_id: int(r.content["who"]["device"]) for r in who}
        global_arrays = synthetic_arrays(params, None)
        k = default_neighbours(devices)
        expected = np.mean([synthetic_arrays(params, d)["w"] for d in range(devices)], axis=0)

        def messages() -> list[Message]:
            content = RecordDict({ARRAYS_KEY: record_of(global_arrays),
                                  CONFIG_KEY: ConfigRecord({})})
            return [Message(content, message_type=MessageType.TRAIN, dst_node_id=n)
                    for n in nodes]

        fedavg = FedAvg(weighted_by_key=WEIGHT_KEY, arrayrecord_key=ARRAYS_KEY)

        def plain() -> np.ndarray:  # what `fedmsr run` does: Flower's FedAvg aggregation
            replies = send_and_collect(grid, messages(), 600)
            arrays, _ = fedavg.aggregate_train(1, replies)
            return arrays_of(arrays)["w"]

        def secure(tag: str) -> np.ndarray:
            params_ = SecAggParams(k, default_threshold(k), CLIP, 32, max_weight=WEIGHT,
                                   round_context=tag.encode(),
                                   sim_state_root=str(state_root / tag))
            result = secure_train_round(grid, messages(), device_of, global_arrays, params_,
                                        600.0)
            return arrays_of(result.arrays)["w"]

        for i in range(repeats + 1):  # the first of each is a warm-up
            for name, fn in (("plain", plain), ("secagg", lambda: secure(f"bench/{i}"))):
                start = time.perf_counter()
                mean = fn()
                elapsed = time.perf_counter() - start
                if not np.allclose(mean, expected, atol=1e-4):
                    raise SystemExit(f"{name}: wrong aggregate")
                if i:
                    times[name].append(elapsed)

    run_simulation(server_app=server, client_app=fedmsr_client_app(), num_supernodes=devices,
                   backend_config=_backend())
    return times


def flower_rounds(devices: int, params: int, repeats: int) -> dict[str, list[float]]:
    """Flower's legacy DefaultWorkflow, without and with SecAggPlusWorkflow."""
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    from privacy.secagg.graph import default_neighbours, default_threshold

    class Synthetic(NumPyClient):
        def __init__(self, device: int) -> None:
            self.device = device

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]):
            burn_cpu(TRAIN_CPU_S)
            delta = synthetic_arrays(params, self.device)["w"]
            return [parameters[0] + delta], WEIGHT, {}

    def client_fn(context: Context):
        return Synthetic(int(context.node_config["partition-id"])).to_client()

    k = default_neighbours(devices)
    times: dict[str, list[float]] = {"flower-plain": [], "flower-secagg+": []}
    initial = ndarrays_to_parameters([np.zeros(params, dtype=np.float32)])

    for name, mods in (("flower-plain", []), ("flower-secagg+", [secaggplus_mod])):
        server = ServerApp()

        @server.main()
        def _main(grid, context, name=name) -> None:
            for i in range(repeats + 1):
                strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0,
                                  min_fit_clients=devices, min_available_clients=devices,
                                  initial_parameters=initial)
                legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=1),
                                       strategy=strategy)
                fit = None if name == "flower-plain" else SecAggPlusWorkflow(
                    num_shares=k + 1, reconstruction_threshold=default_threshold(k),
                    max_weight=WEIGHT, clipping_range=CLIP)
                workflow = DefaultWorkflow(fit_workflow=fit)
                start = time.perf_counter()
                workflow(grid, legacy)
                if i:
                    times[name].append(time.perf_counter() - start)

        run_simulation(server_app=server, client_app=ClientApp(client_fn=client_fn, mods=mods),
                       num_supernodes=devices, backend_config=_backend())
    return times


def _backend() -> dict[str, Any]:
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count(), "num_gpus": 0, "logging_level": 40,
                          "include_dashboard": False}}


def main() -> None:
    import logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--params", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-flower", action="store_true", help="skip the Flower reference")
    parser.add_argument("--train-cpu-s", type=float, default=0.0,
                        help="CPU seconds of synthetic local training per device (all paths)")
    args = parser.parse_args()
    global TRAIN_CPU_S
    TRAIN_CPU_S = args.train_cpu_s
    os.environ["FEDMSR_BENCH_TRAIN_CPU_S"] = str(args.train_cpu_s)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    logging.getLogger("flwr").propagate = False  # Opacus' basicConfig would echo every record
    print(f"{os.cpu_count()} CPUs; median of {args.repeats} rounds after a warm-up; "
          f"{args.train_cpu_s} CPU s of synthetic training per device")
    print(f"{'n':>4} {'params':>8} {'plain s':>8} {'secagg s':>9} {'ratio':>6} "
          f"{'flwr plain':>10} {'flwr SA+':>9} {'ratio':>6} {'secagg/flwr SA+':>15}")
    for params in args.params:
        for n in args.devices:
            ours = {k: statistics.median(v) for k, v in fedmsr_rounds(n, params, args.repeats).items()}
            line = (f"{n:>4} {params:>8} {ours['plain']:8.2f} {ours['secagg']:9.2f} "
                    f"{ours['secagg'] / ours['plain']:6.2f}")
            if not args.no_flower:
                ref = {k: statistics.median(v)
                       for k, v in flower_rounds(n, params, args.repeats).items()}
                line += (f" {ref['flower-plain']:10.2f} {ref['flower-secagg+']:9.2f} "
                         f"{ref['flower-secagg+'] / ref['flower-plain']:6.2f} "
                         f"{ours['secagg'] / ref['flower-secagg+']:15.2f}")
            print(line, flush=True)


if __name__ == "__main__":
    main()
