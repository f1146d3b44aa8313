"""The federation loop the ServerApp runs: check-in, train, aggregate, evaluate, checkpoint.

One round, as data (DESIGN.md): roll call of the devices (a `query.checkin` message),
seeded sampling among those that answered, train messages carrying the global arrays and
the round's instructions, FedAvg over the replies that came back in time, held-out probes,
then a checkpoint and the history files. Every round ends in a checkpoint, so a killed
run resumes after its last finished round and never repeats one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from rich.console import Console

from fl_client.client_app import CHALLENGE_KEY, arrays_of, record_of
from fl_client.messages import (
    CHECKIN_ACTION,
    CONFIG_KEY,
    DEVICE_KEY,
    DP_EVENT_KEY,
    METRICS_KEY,
    WEIGHT_KEY,
    Instructions,
    dp_event_from_record,
)
from fl_client.synthetic import ACTIVITIES, FleetSpec
from fl_client.trainer import TrainConfig
from fl_server import dp_modes
from fl_server.atomic import write_bytes_atomic, write_text_atomic
from fl_server.checkpoint import Checkpoint, latest_checkpoint, save_checkpoint
from fl_server.collection import Collector
from fl_server.config import RunConfig
from fl_server.evaluation import HeldOut, evaluate_encoder
from fl_server.fault_points import fault_point, killing_after_push
from fl_server.history import write_history
from fl_server.observers import RoundObserver
from fl_server.registry.identity import CheckinGate
from fl_server.run_status import RunStatus, read_status, write_status
from fl_server.secagg_identities import secagg_credentials
from privacy.encoder import EncoderConfig, build_model, state_to_numpy
from privacy.secagg.errors import ProtocolAbort
from strategies.budget_selection import BudgetExhausted
from strategies.messaging import send_and_collect, wait_for_nodes
from strategies.robust_aggregation import robust_strategy
from strategies.secagg_workflow import QUICK_STAGE_TIMEOUT_S, SecAggParams, secure_train_round
from strategies.seeded_fedavg import SeededFedAvg
from strategies.update_validation import RoundTicket, Screening, ValidationPolicy, screen_round

#: The check-in and evaluation replies are small; they get a shorter deadline than training.
QUERY_TIMEOUT_S = 120.0
#: How long a round waits for the whole fleet to be connected before going on without it.
NODE_WAIT_S = 60.0


class RoundFailed(RuntimeError):
    """A round could not produce a new global model (too few devices answered)."""


@dataclass(frozen=True)
class Plan:
    """The per-run constants every round's instructions are built from."""

    fleet: FleetSpec
    model: EncoderConfig
    train: TrainConfig
    train_days: int
    #: DP modes (fl_server/dp_modes.py): the device-side update clip of central DP, and the
    #: `budget.*` keys devices' own ledgers read.
    update_clip: float = 0.0
    budget: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Plan:
        """The fleet films `days` training days then `eval_days` held-out days."""
        return cls(
            train_days=cfg.days,
            fleet=FleetSpec(seed=cfg.seed, num_devices=cfg.devices, days=cfg.days + cfg.eval_days,
                            clips_per_day=cfg.clips_per_day, frames=cfg.frames,
                            image_size=cfg.image_size),
            model=EncoderConfig(image_size=cfg.image_size, frames=cfg.frames,
                                latent_dim=cfg.latent_dim, width=cfg.width,
                                num_activities=len(ACTIVITIES)),
            train=TrainConfig(epochs=cfg.local_epochs, batch_size=cfg.batch_size,
                              lr=cfg.learning_rate, beta=cfg.beta, utility=cfg.utility,
                              dp_sgd=cfg.dp_sgd, noise_multiplier=cfg.noise_multiplier,
                              clip_norm=cfg.clip_norm, seed=cfg.seed),
            update_clip=cfg.central_clip_norm if cfg.central_dp else 0.0,
            budget=dp_modes.budget_flat(cfg),
        )

    def instructions(self, server_round: int) -> ConfigRecord:
        record = Instructions(server_round, self.fleet, self.model, self.train,
                              self.train_days, self.update_clip).to_record()
        record.update(self.budget)
        return record


def run_federation(grid: Grid, cfg: RunConfig, console: Console | None = None,
                   observers: Sequence[RoundObserver] = ()) -> None:
    """Run (or resume) `cfg`'s federation to its planned number of rounds."""
    console = console or Console()
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        _run_rounds(grid, cfg, run_dir, console, observers)
    except BaseException as exc:
        previous = read_status(run_dir)
        done = previous.completed_rounds if previous else 0
        status = RunStatus("failed", cfg.rounds, completed_rounds=done, reason=_reason(exc))
        write_status(run_dir, status)
        for observer in observers:
            observer.run_finished(cfg, status)
        raise


def _run_rounds(grid: Grid, cfg: RunConfig, run_dir: Path, console: Console,
                observers: Sequence[RoundObserver]) -> None:
    dp_modes.require_ledger_for_caps(cfg)
    plan = Plan.from_config(cfg)
    strategy = robust_strategy(cfg.aggregation, byzantine=cfg.byzantine_devices,
                               trim_fraction=cfg.trim_fraction,
                               seed=cfg.seed, fraction_train=cfg.fraction_train,
                               min_train_nodes=cfg.min_train_devices,
                               min_available_nodes=cfg.min_train_devices,
                               weighted_by_key=WEIGHT_KEY, arrayrecord_key="arrays",
                               configrecord_key=CONFIG_KEY)
    strategy = dp_modes.make_strategy(cfg, strategy)  # central DP; budget-aware selection
    skipped: list[str] = []
    ckpt = latest_checkpoint(run_dir, skipped)
    for problem in skipped:  # corrupt or truncated: named, and the previous good one used
        console.print(f"[yellow]skipping checkpoint[/] {problem}", soft_wrap=True,
                      highlight=False)
    if ckpt is None:
        ckpt = Checkpoint(0, state_to_numpy(build_model(plan.model, seed=cfg.seed)))
    else:
        strategy.load_state(ckpt.strategy_state)
        # A crash between a checkpoint and the history write (fault point "commit") left
        # history.json a round behind: the checkpoint's history is the true one.
        write_history(run_dir, list(ckpt.history))
        dp_modes.commit_checkpointed(strategy, ckpt.server_round)  # (fault point "commit")
        console.print(f"[bold]resuming[/] {cfg.run_id} after round {ckpt.server_round} "
                      f"of {cfg.rounds}")
    held_out = HeldOut.for_fleet(plan.fleet, plan.train_days)
    collector = Collector.for_config(cfg)  # representation uploads (off by default)
    arrays, history = ckpt.arrays, list(ckpt.history)
    for observer in observers:
        observer.run_started(cfg, ckpt.server_round)
    for server_round in range(ckpt.server_round + 1, cfg.rounds + 1):
        write_status(run_dir, RunStatus("running", cfg.rounds, completed_rounds=server_round - 1))
        try:
            arrays, record = _one_round(grid, cfg, plan, strategy, held_out, arrays, server_round)
        except BudgetExhausted as exc:  # nothing sent this round: stop cleanly, keep the model
            _stop_budget_exhausted(run_dir, cfg, plan, arrays, exc, console, observers)
            return
        if collector is not None and collector.due(server_round):
            collector.collect(grid, plan, arrays, record)  # uploads, ledgers, leakage curve
        history.append(record)
        save_checkpoint(run_dir, Checkpoint(server_round, arrays, strategy.state(), history))
        fault_point("commit", server_round)  # test-only crash point (docs/fault-injection.md)
        dp_modes.commit_round(strategy, server_round)  # reserved -> committed
        write_history(run_dir, history)
        _print_round(console, record, cfg.rounds)
        for observer in observers:
            observer.round_finished(cfg, record)
    _save_final_model(run_dir, plan.model, arrays)
    status = RunStatus("completed", cfg.rounds, completed_rounds=cfg.rounds)
    write_status(run_dir, status)
    for observer in observers:
        observer.run_finished(cfg, status)


def _stop_budget_exhausted(run_dir: Path, cfg: RunConfig, plan: Plan,
                           arrays: dict[str, np.ndarray], exc: BudgetExhausted,
                           console: Console, observers: Sequence[RoundObserver]) -> None:
    """Too few devices can afford another round: the model so far is the final one."""
    _save_final_model(run_dir, plan.model, arrays)
    status = RunStatus("budget-exhausted", cfg.rounds, completed_rounds=exc.server_round - 1,
                       reason=str(exc))
    write_status(run_dir, status)
    console.print(f"[yellow]budget-exhausted[/] {exc}", soft_wrap=True, highlight=False)
    for observer in observers:
        observer.run_finished(cfg, status)


def _one_round(
    grid: Grid, cfg: RunConfig, plan: Plan, strategy: SeededFedAvg, held_out: HeldOut,
    arrays: dict[str, np.ndarray], server_round: int,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    started = time.perf_counter()
    global_record = record_of(arrays)  # serialized once: sent to every device, and counted
    model_bytes = record_bytes(global_record)
    answers: dict[int, Any] = {}
    devices = checkin(grid, plan, server_round, CheckinGate.for_config(cfg), answers)
    checkin_s = time.perf_counter() - started
    if len(devices) < cfg.min_train_devices:
        raise RoundFailed(f"round {server_round}: {len(devices)} devices checked in, "
                          f"{cfg.min_train_devices} needed")
    fault_point("checkin", server_round)
    devices, budget = dp_modes.begin_round(strategy, cfg, plan.train, server_round, devices,
                                           answers)  # own-ledger refusals out; audit; plan
    strategy.candidates = sorted(devices)
    ticket = RoundTicket(cfg.run_id, server_round)  # replies echo it: no replays
    messages = list(strategy.configure_train(server_round, global_record,
                                             ticket.stamp(plan.instructions(server_round)), grid))
    fault_point("reserved", server_round)  # the ledger has reserved; nothing sent yet
    policy = ValidationPolicy(cfg.max_update_norm, cfg.clips_per_day * cfg.days,
                              cfg.round_timeout_s)
    screening = Screening()  # every reply is validated before it can touch the model
    train_started = time.perf_counter()
    aborted: str | None = None
    central = dp_modes.is_central(strategy)
    # SecAgg+: the server only ever sees the weighted mean update. A central DP draw of one
    # device goes in the clear: a sum of one is that update, SecAgg would reveal it as well.
    if cfg.secure_aggregation and not (central and len(messages) < 2):
        try:
            secure = secure_train_round(grid, messages, devices, arrays, SecAggParams(
                cfg.secagg_neighbours, cfg.secagg_threshold, cfg.secagg_clip,
                cfg.secagg_mod_bits, max_weight=cfg.clips_per_day * cfg.days,
                enrollment_seed=cfg.seed,
                round_context=f"{cfg.run_id}/round-{server_round}".encode(),
                credentials=secagg_credentials(cfg, devices.values())),
                cfg.round_timeout_s, min(QUICK_STAGE_TIMEOUT_S, cfg.round_timeout_s),
                screen_masked=lambda sent, got, setup: screen_round(
                    screening, ticket, policy, sent, got, devices, secure_setup=setup))
        except ProtocolAbort as exc:  # below threshold: no sum at all; the run goes on
            aborted, secure = str(exc), None
        if secure is None:
            replies, new_arrays, train_metrics = [], global_record, {}
            train_wall, aggregate_s, secagg_dropouts = time.perf_counter() - train_started, 0.0, 0
        else:
            replies, train_metrics = secure.replies, secure.metrics
            new_arrays = dp_modes.secure_release(strategy, secure.result.mean,
                                                 secure.result.total_weight, secure.arrays)
            train_wall, aggregate_s = secure.train_s, secure.aggregate_s
            secagg_dropouts = (len(secure.result.dropped_after_sharing)
                               + len(secure.result.excluded))
    else:
        # Aggregate in device order, not arrival order: floating-point sums then do not
        # depend on which device finished first, so a seed gives the same model every run.
        replies = sorted(send_and_collect(killing_after_push(grid, server_round), messages,
                                          cfg.round_timeout_s),
                         key=lambda r: devices.get(r.metadata.src_node_id, -1))
        train_wall = time.perf_counter() - train_started
        replies = screen_round(screening, ticket, policy, messages, replies, devices, arrays)
        fault_point("aggregate", server_round)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        aggregate_s = time.perf_counter() - train_started - train_wall
        secagg_dropouts = 0
    ok = [r for r in replies if not r.has_error()]
    # Central DP releases its noisy average whoever answered (the denominator is fixed).
    if aborted is None and (new_arrays is None or train_metrics is None
                            or (len(ok) < cfg.min_train_devices and not central)):
        raise RoundFailed(f"round {server_round}: {len(ok)} of {len(messages)} devices "
                          f"returned an acceptable update{screening.summary()}, "
                          f"{cfg.min_train_devices} needed")
    arrays = arrays_of(new_arrays)
    eval_started = time.perf_counter()
    # Devices' own evaluation metrics are un-noised functions of private clips: skipped
    # under DP-SGD (and a DP device would decline anyway).
    evaluated = [] if cfg.dp_mode != "none" else [r.metadata.src_node_id for r in ok]
    on_devices = federated_evaluate(grid, plan, strategy, server_round, arrays, evaluated) \
        if evaluated else {}
    probes = evaluate_encoder(plan.model, arrays, held_out, seed=cfg.seed, beta=cfg.beta)
    client_seconds = [float(r.content[METRICS_KEY]["train_seconds"]) for r in ok]
    record = {
        "round": server_round,
        "loss": probes["loss"],
        "kl_bits": probes["kl_bits"],
        "utility_acc": probes["utility_acc"],
        "identity_acc": probes["identity_acc"],
        "utility_chance": probes["utility_chance"],
        "identity_chance": probes["identity_chance"],
        # Device-reported (None under DP-SGD, where devices keep these to themselves).
        "train_loss": _maybe(train_metrics, "loss"),
        "train_kl_bits": _maybe(train_metrics, "kl_bits"),
        "device_kl_bits": on_devices.get("kl_bits"),
        "device_activity_acc": on_devices.get("activity_acc"),
        "sampled": len(messages),
        "responded": len(ok),
        "failed": len(messages) - len(ok) - len(screening.rejected),
        **screening.history(),  # {"rejected": {reason: n}, "rejected_devices": [...]}
        "devices": sorted(devices[r.metadata.src_node_id] for r in ok),
        "dp_events": dp_events(screening.released_with(ok), devices),
        "secagg_dropouts": secagg_dropouts,
        # SecAgg+ aborted below its threshold: the model is unchanged, nothing was released,
        # and whatever budget the round reserved stays spent.
        "aborted": aborted,
        # Model-array payload bytes (the dominant part of every message), both directions.
        "bytes_sent": model_bytes * (len(messages) + len(evaluated)),
        "bytes_received": sum(_array_bytes(r) for r in ok),
        "checkin_s": checkin_s,
        "train_phase_s": train_wall,
        "aggregate_s": aggregate_s,
        "client_train_s_sum": float(sum(client_seconds)),
        "client_train_s_max": float(max(client_seconds, default=0.0)),
        "eval_s": time.perf_counter() - eval_started,
        "wall_s": time.perf_counter() - started,
        **dp_modes.round_record(strategy, server_round, budget),
    }
    return arrays, record


def federated_evaluate(
    grid: Grid, plan: Plan, strategy: SeededFedAvg, server_round: int,
    arrays: dict[str, np.ndarray], node_ids: list[int],
) -> dict[str, float]:
    """The new global model on the devices' own held-out days (weighted means of scalars)."""
    content = RecordDict({"arrays": record_of(arrays), CONFIG_KEY: plan.instructions(server_round)})
    messages = [Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=node)
                for node in node_ids]
    replies = send_and_collect(grid, messages, QUERY_TIMEOUT_S)
    metrics = strategy.aggregate_evaluate(server_round, replies)
    return {} if metrics is None else {k: float(v) for k, v in metrics.items()}


def checkin(grid: Grid, plan: Plan, server_round: int,
            gate: CheckinGate | None = None,
            answers_out: dict[int, Any] | None = None) -> dict[int, int]:
    """Roll call: map each answering node id to the device index it reports.

    With a `gate` (registry-backed runs), the query carries a fresh nonce and only nodes
    that sign it with the enrollment key of an eligible device take part. `answers_out`
    receives every in-fleet answer (clips held, own-ledger report) by node id.
    """
    nodes = wait_for_nodes(grid, plan.fleet.num_devices, NODE_WAIT_S) if gate is None \
        else gate.wait_for_devices(grid, NODE_WAIT_S)
    content = RecordDict({CONFIG_KEY: plan.instructions(server_round)})
    if gate is not None:
        content[CHALLENGE_KEY] = gate.challenge()
    messages = [Message(content=content, message_type=f"{MessageType.QUERY}.{CHECKIN_ACTION}",
                        dst_node_id=node_id) for node_id in nodes]
    replies = send_and_collect(grid, messages, QUERY_TIMEOUT_S)
    answers = {reply.metadata.src_node_id: reply.content[DEVICE_KEY] for reply in replies
               if not reply.has_error() and reply.content[DEVICE_KEY]["in-fleet"]}
    if answers_out is not None:
        answers_out.update(answers)
    if gate is not None:
        return gate.admit(answers)
    return {node_id: int(answer["device"]) for node_id, answer in answers.items()}


def _save_final_model(run_dir: Path, model: EncoderConfig, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(run_dir / "final_model.npz", buffer.getvalue())
    write_text_atomic(run_dir / "final_model.json",
                      json.dumps({"encoder": dataclasses.asdict(model)}, indent=2) + "\n")


def _print_round(console: Console, record: dict[str, Any], rounds: int) -> None:
    console.print(
        f"round {record['round']:>3}/{rounds} loss {record['loss']:.3f} "
        f"KL {record['kl_bits']:.2f}b utility {record['utility_acc']:.2f}"
        f"/{record['utility_chance']:.2f} identity {record['identity_acc']:.2f}"
        f"/{record['identity_chance']:.2f} dev {record['responded']}/{record['sampled']} "
        f"{record['wall_s']:.1f}s"
        + (f" [yellow]aborted[/]: {record['aborted']}" if record.get("aborted") else ""),
        soft_wrap=True, highlight=False,
    )


def dp_events(replies: list[Message], devices: dict[int, int]) -> list[dict[str, Any]]:
    """The DP-SGD events the devices report for this round (accounted by the budget ledger)."""
    events = []
    for reply in replies:
        if DP_EVENT_KEY in reply.content:
            event = dp_event_from_record(reply.content[DP_EVENT_KEY])
            events.append({"device": devices[reply.metadata.src_node_id], **event.to_dict()})
    return sorted(events, key=lambda e: e["device"])


def record_bytes(record: ArrayRecord) -> int:
    """Serialized size of an ArrayRecord's arrays (the bulk of every model message)."""
    return sum(len(array.data) for array in record.values())


def _array_bytes(reply: Message) -> int:
    return sum(record_bytes(record) for record in reply.content.array_records.values())


def _maybe(metrics: Any, key: str) -> float | None:
    return float(metrics[key]) if key in metrics else None


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:500]
