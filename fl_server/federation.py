"""The federation loop the ServerApp runs: a run is rounds, a round is stages.

One round, as data (docs/architecture.md):

1. **check-in** (`fl_server.checkin`): roll call; in a registry-backed run, only devices
   that sign the round's nonce with an eligible enrollment key are admitted;
2. **admit and select** (`fl_server.dp_policy`): budget answers of check-in, then the
   strategy samples among the devices that can afford the round, whose releases the
   ledger reserves before any message leaves;
3. **train** (`fl_server.aggregators`): plain (validated updates, the strategy's rule) or
   SecAgg+ (the mean update only), each returning a typed outcome;
4. **evaluate**: the server's held-out probes, and the devices' own metrics outside DP;
5. **record**: one `privacy.wire.round_record.RoundRecord`; then, in the run loop, an
   optional representation collection, the checkpoint, the ledger commit, the history
   files and the observers.

Every round ends in a checkpoint, so a killed run resumes after its last finished round
and never repeats one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid
from rich.console import Console

from fl_server.aggregators import (
    AbortedAggregator,
    Aggregator,
    PlainAggregator,
    SecureAggregator,
)
from fl_server.checkin import checkin
from fl_server.checkpoint import Checkpoint, latest_checkpoint, npz_bytes, save_checkpoint
from fl_server.collection import Collector
from fl_server.config import RunConfig
from fl_server.dp_modes import budget_plan
from fl_server.dp_policy import DpPolicy
from fl_server.evaluation import HeldOut, evaluate_encoder
from fl_server.fault_points import fault_point
from fl_server.federated_evaluation import federated_evaluate
from fl_server.history import write_history
from fl_server.observers import RoundObserver
from fl_server.invariance import FittedDiscriminator, collected_version
from fl_server.registry.identity import CheckinGate
from fl_server.round_plan import Plan
from fl_server.round_strategy import build_strategy
from fl_server.run_status import RunStatus, read_status, write_status
from fl_server.secagg_identities import secagg_credentials
from privacy.atomic_write import write_bytes_atomic, write_text_atomic
from privacy.encoder import EncoderConfig, build_model, state_to_numpy
from privacy.identity_adversary import Discriminator
from privacy.secagg.messages import RoundSetup
from privacy.wire.arrays import arrays_of, record_bytes, record_of
from privacy.wire.dp_event import dp_event_from_record
from privacy.wire.instructions import discriminator_record
from privacy.wire.keys import DISCRIMINATOR_KEY, DP_EVENT_KEY, METRICS_KEY
from privacy.wire.records import config_record, metric_float, metric_record
from privacy.wire.round_record import DeviceDpEvent, RoundRecord
from strategies.budget_selection import BudgetExhausted
from strategies.secagg_workflow import QUICK_STAGE_TIMEOUT_S, SecAggParams
from strategies.seeded_fedavg import SeededFedAvg
from strategies.update_validation import RoundTicket, Screening, ValidationPolicy, screen_round

#: A device's train_seconds and the server's wait are read from two clocks (and the reply
#: is screened a moment after it arrived): a second is more than either drift.
TRAIN_CLOCK_SLACK_S = 1.0


class RoundFailed(RuntimeError):
    """A round could not produce a new global model (too few devices answered)."""


@dataclass(frozen=True)
class Federation:
    """What every round of a run uses, built once at its start."""

    cfg: RunConfig
    plan: Plan
    strategy: SeededFedAvg
    dp: DpPolicy
    held_out: HeldOut

    @classmethod
    def for_config(cls, cfg: RunConfig) -> Federation:
        plan = Plan.from_config(cfg, budget_plan(cfg))
        return cls(cfg, plan, build_strategy(cfg), DpPolicy.for_config(cfg, plan.train),
                   _held_out(cfg, plan))


def _held_out(cfg: RunConfig, plan: Plan) -> HeldOut:
    """The server's probe clips: the synthetic fleet's held-out days, or the operator's own
    eval manifest (a run over real footage: the server holds no device's footage)."""
    if not cfg.eval_dataset:
        return HeldOut.for_fleet(plan.fleet, plan.train_days, cfg.probe_devices)
    from fl_server.eval_set import held_out_from_manifest

    return held_out_from_manifest(cfg.eval_dataset, cfg.utility_label, cfg.dataset,
                                  cfg.frames, cfg.image_size)


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
    fed = Federation.for_config(cfg)
    skipped: list[str] = []
    ckpt = latest_checkpoint(run_dir, skipped)
    for problem in skipped:  # corrupt or truncated: named, and the previous good one used
        console.print(f"[yellow]skipping checkpoint[/] {problem}", soft_wrap=True,
                      highlight=False)
    if ckpt is None:
        ckpt = Checkpoint(0, state_to_numpy(build_model(fed.plan.model, seed=cfg.seed)))
    else:
        fed.strategy.load_state(ckpt.strategy_state)
        # A crash between a checkpoint and the history write (fault point "commit") left
        # history.json a round behind: the checkpoint's history is the true one.
        write_history(run_dir, [RoundRecord.from_json(r) for r in ckpt.history])
        fed.dp.commit_checkpointed(ckpt.server_round)  # (fault point "commit")
        console.print(f"[bold]resuming[/] {cfg.run_id} after round {ckpt.server_round} "
                      f"of {cfg.rounds}")
    collector = Collector.for_config(cfg, fed.held_out)  # representation uploads (off by default)
    arrays = ckpt.arrays
    history = [RoundRecord.from_json(r) for r in ckpt.history]
    discriminator = _resumed_discriminator(cfg, collector, history)
    for observer in observers:
        observer.run_started(cfg, ckpt.server_round)
    for server_round in range(ckpt.server_round + 1, cfg.rounds + 1):
        write_status(run_dir, RunStatus("running", cfg.rounds, completed_rounds=server_round - 1))
        try:
            arrays, record = _one_round(fed, grid, arrays, server_round, discriminator)
        except BudgetExhausted as exc:  # nothing sent this round: stop cleanly, keep the model
            _stop_budget_exhausted(run_dir, cfg, fed.plan, arrays, exc, observers)
            return
        if collector is not None and collector.due(server_round):
            collected = collector.collect(grid, fed.plan, arrays, server_round)
            record = record.with_collection(collected.figures, collected.bytes_sent,
                                            collected.bytes_received)
            if collected.discriminator is not None:  # the next rounds train against it
                discriminator = collected.discriminator.discriminator
        history.append(record)
        save_checkpoint(run_dir, Checkpoint(server_round, arrays, fed.strategy.state(),
                                            [r.to_json() for r in history]))
        fault_point("commit", server_round)  # test-only crash point (docs/fault-injection.md)
        fed.dp.commit(server_round)  # reserved -> committed
        write_history(run_dir, history)
        _print_round(console, record, cfg.rounds)
        for observer in observers:
            observer.round_finished(cfg, record)
    _save_final_model(run_dir, fed.plan.model, arrays)
    status = RunStatus("completed", cfg.rounds, completed_rounds=cfg.rounds)
    write_status(run_dir, status)
    for observer in observers:
        observer.run_finished(cfg, status)


def _stop_budget_exhausted(run_dir: Path, cfg: RunConfig, plan: Plan,
                           arrays: dict[str, np.ndarray], exc: BudgetExhausted,
                           observers: Sequence[RoundObserver]) -> None:
    """Too few devices can afford another round: the model so far is the final one.

    Nothing is printed here: the launcher (`fedmsr run`) prints the status's one-line
    summary once; the full reason, every device and its cap, stays in status.json and the
    registry (`fedmsr runs show`).
    """
    _save_final_model(run_dir, plan.model, arrays)
    status = RunStatus("budget-exhausted", cfg.rounds, completed_rounds=exc.server_round - 1,
                       reason=str(exc), summary=exc.summary)
    write_status(run_dir, status)
    for observer in observers:
        observer.run_finished(cfg, status)


def _resumed_discriminator(cfg: RunConfig, collector: Collector | None,
                           history: Sequence[RoundRecord]) -> Discriminator | None:
    """The device discriminator of the last collection before a resume, refitted from the
    store (the fit is deterministic); None when invariance is off or nothing was collected."""
    if collector is None or cfg.invariance_weight == 0:
        return None
    for record in reversed(history):
        version = collected_version(dict(record.collection))
        if version is not None:
            fitted = collector.discriminator(version, record.round)
            return fitted.discriminator if isinstance(fitted, FittedDiscriminator) else None
    return None


def _one_round(fed: Federation, grid: Grid, arrays: dict[str, np.ndarray],
               server_round: int, discriminator: Discriminator | None = None
               ) -> tuple[dict[str, np.ndarray], RoundRecord]:
    cfg, plan, strategy = fed.cfg, fed.plan, fed.strategy
    started = time.perf_counter()
    global_record = record_of(arrays)  # serialized once: sent to every device, and counted
    gate = CheckinGate.for_config(cfg)
    roster = checkin(grid, plan, server_round, gate)
    checkin_s = time.perf_counter() - started
    if len(roster) < cfg.min_train_devices:
        raise RoundFailed(f"round {server_round}: {len(roster)} devices checked in, "
                          f"{cfg.min_train_devices} needed")
    fault_point("checkin", server_round)
    admission = fed.dp.admit(server_round, roster)  # own-ledger refusals out; audit; plan
    devices = {node: roster.devices[node] for node in admission.candidates}
    nodes = fed.dp.select(server_round, admission, strategy.sample)  # reserved before sending
    ticket = RoundTicket(cfg.run_id, server_round)  # replies echo it: no replays
    invariance = discriminator is not None and plan.train.invariance_weight > 0
    messages = strategy.train_messages(
        server_round, global_record,
        ticket.stamp(plan.instructions(server_round, invariance=invariance)), nodes)
    if invariance:
        assert discriminator is not None
        shipped = discriminator_record(discriminator)
        for message in messages:
            message.content[DISCRIMINATOR_KEY] = shipped
    fault_point("reserved", server_round)  # the ledger has reserved; nothing sent yet
    screening = Screening()  # every reply is validated before it can touch the model
    outcome = _aggregator(fed, screening, ticket, devices, arrays, server_round,
                          len(messages), gate).train(grid, server_round, messages, devices,
                                                     arrays)
    ok = [r for r in outcome.replies if not r.has_error()]
    central = fed.dp.central is not None
    # Central DP releases its noisy average whoever answered (the denominator is fixed).
    if outcome.aborted is None and (outcome.arrays is None or outcome.metrics is None
                                    or (len(ok) < cfg.min_train_devices and not central)):
        raise RoundFailed(f"round {server_round}: {len(ok)} of {len(messages)} devices "
                          f"returned an acceptable update{screening.summary()}, "
                          f"{cfg.min_train_devices} needed")
    if outcome.arrays is not None:
        arrays = arrays_of(outcome.arrays)
    eval_started = time.perf_counter()
    # Devices' own evaluation metrics are un-noised functions of private clips: only
    # outside DP, and every `--eval-every` rounds (one exchange fewer in the others).
    evaluated = [] if fed.dp.private or not cfg.devices_evaluate(server_round) \
        else [r.metadata.src_node_id for r in ok]
    on_devices = federated_evaluate(grid, plan, strategy, server_round, arrays, evaluated)
    probes = evaluate_encoder(plan.model, arrays, fed.held_out, seed=cfg.seed, beta=cfg.beta)
    client_seconds = [metric_float(metric_record(r.content, METRICS_KEY), "train_seconds")
                      for r in ok]
    metrics = outcome.metrics or {}
    record = RoundRecord(
        round=server_round,
        loss=probes["loss"], kl_bits=probes["kl_bits"],
        utility_acc=probes["utility_acc"], identity_acc=probes["identity_acc"],
        utility_chance=probes["utility_chance"], identity_chance=probes["identity_chance"],
        train_loss=_maybe(metrics, "loss"), train_kl_bits=_maybe(metrics, "kl_bits"),
        device_kl_bits=on_devices.get("kl_bits"),
        device_activity_acc=on_devices.get("activity_acc"),
        sampled=len(messages), responded=len(ok),
        failed=len(messages) - len(ok) - len(screening.rejected),
        rejected=screening.counts(),
        rejected_devices=screening.rejected_devices(),
        devices=tuple(sorted(devices[r.metadata.src_node_id] for r in ok)),
        dp_events=_dp_events(screening.released_with(ok), devices),
        aborted=outcome.aborted,
        # Model-array payload bytes (the dominant part of every message), both directions.
        bytes_sent=record_bytes(global_record) * (len(messages) + len(evaluated)),
        bytes_received=sum(_array_bytes(r) for r in ok),
        checkin_s=checkin_s, train_phase_s=outcome.train_s, aggregate_s=outcome.aggregate_s,
        client_train_s_sum=float(sum(client_seconds)),
        client_train_s_max=float(max(client_seconds, default=0.0)),
        eval_s=time.perf_counter() - eval_started,
        wall_s=time.perf_counter() - started,
        budget=fed.dp.record(server_round, admission, strategy.round_figures()),
        secagg=outcome.secagg,
        # The devices' mean identity-invariance penalty (outside DP only, like train_loss).
        extra={} if (spread := _maybe(metrics, "invariance_loss")) is None
        else {"train_invariance": spread})
    return arrays, record


def _aggregator(fed: Federation, screening: Screening, ticket: RoundTicket,
                devices: dict[int, int], arrays: dict[str, np.ndarray], server_round: int,
                sampled: int, gate: CheckinGate | None = None) -> Aggregator:
    """Plain or SecAgg+ for this round, both screening every reply before it counts.

    A device revoked between its check-in and the screening of its reply is dropped there
    (`revoked`): in a SecAgg+ round that makes it a dropout, whose masks are removed."""
    cfg = fed.cfg
    # Nothing has been sent yet: the time from here to a reply's screening bounds how long
    # the device can have trained, whatever the deadlines and however loaded the machine.
    sending = time.monotonic()

    def screen(sent: Sequence[Message], got: list[Message],
               setup: RoundSetup | None) -> list[Message]:
        waited = time.monotonic() - sending + TRAIN_CLOCK_SLACK_S
        policy = ValidationPolicy(cfg.max_update_norm, cfg.clips_per_day * cfg.days, waited)
        if setup is None:
            accepted = screen_round(screening, ticket, policy, sent, got, devices, arrays)
        else:
            accepted = screen_round(screening, ticket, policy, sent, got, devices,
                                    secure_setup=setup)
        if gate is None:
            return accepted
        revoked = gate.revoked_since_admission(r.metadata.src_node_id for r in accepted)
        return screening.withdraw(revoked, devices) if revoked else accepted

    if not cfg.secure_aggregation:
        return PlainAggregator(fed.strategy, screen, cfg.round_timeout_s)
    # A secure run never falls back to plaintext: a draw too small for secure aggregation
    # (one device under central DP) releases nothing this round.
    if sampled < 2:
        return AbortedAggregator(f"secure aggregation needs at least 2 devices, {sampled} "
                                 "sampled: nothing released this round")
    # Devices clip their update to the norm bound (the tighter of the validation bound and
    # central DP's clip) so the server can check the decoded mean against it.
    norm = cfg.max_update_norm if not cfg.central_dp else min(cfg.max_update_norm,
                                                                cfg.central_clip_norm)
    params = SecAggParams(
        cfg.secagg_neighbours, cfg.secagg_threshold, cfg.secagg_clip, cfg.secagg_mod_bits,
        max_weight=cfg.clips_per_day * cfg.days, enrollment_seed=cfg.seed,
        round_context=f"{cfg.run_id}/round-{server_round}".encode(),
        credentials=secagg_credentials(cfg, devices.values()),
        max_colluding=cfg.secagg_max_colluding, norm_bound=float(norm),
        sim_state_root=str((cfg.run_dir() / "device-state").resolve()))
    return SecureAggregator(fed.strategy, params, screen, cfg.round_timeout_s,
                            min(QUICK_STAGE_TIMEOUT_S, cfg.round_timeout_s))


def _dp_events(replies: list[Message], devices: dict[int, int]) -> tuple[DeviceDpEvent, ...]:
    """The DP-SGD events the devices report for this round (accounted by the budget ledger)."""
    events = []
    for reply in replies:
        if DP_EVENT_KEY in reply.content:
            event = dp_event_from_record(config_record(reply.content, DP_EVENT_KEY))
            events.append(DeviceDpEvent(devices[reply.metadata.src_node_id],
                                        event.sample_rate, event.noise_multiplier, event.steps))
    return tuple(sorted(events, key=lambda e: e.device))


def _array_bytes(reply: Message) -> int:
    return sum(record_bytes(record) for record in reply.content.array_records.values())


def _maybe(metrics: Any, key: str) -> float | None:
    return float(metrics[key]) if key in metrics else None


def _save_final_model(run_dir: Path, model: EncoderConfig, arrays: dict[str, np.ndarray]) -> None:
    write_bytes_atomic(run_dir / "final_model.npz", npz_bytes(arrays))
    write_text_atomic(run_dir / "final_model.json",
                      json.dumps({"encoder": dataclasses.asdict(model)}, indent=2) + "\n")


def _print_round(console: Console, r: RoundRecord, rounds: int) -> None:
    console.print(
        f"round {r.round:>3}/{rounds} loss {r.loss:.3f} KL {r.kl_bits:.2f}b utility "
        f"{r.utility_acc:.2f}/{r.utility_chance:.2f} identity {r.identity_acc:.2f}"
        f"/{r.identity_chance:.2f} dev {r.responded}/{r.sampled} {r.wall_s:.1f}s"
        + (f" [yellow]aborted[/]: {r.aborted}" if r.aborted else "") + _collection_note(r),
        soft_wrap=True, highlight=False,
    )


def _collection_note(r: RoundRecord) -> str:
    """A collection round: which attack crossed the leakage alert level (when one did),
    and the fleet's largest accumulated randomized-release epsilon (when a release ran)."""
    note = ""
    crossed = r.leakage_crossed
    if crossed is not None and crossed.attacks:
        note += " [red]leakage[/]: " + ", ".join(
            f"{name} {gain:+.2f}" for name, gain in crossed.attacks.items()
        ) + f" >= {crossed.alert:.2f}"
    release = r.release_epsilon
    if release is not None:
        note += f" release eps max {release.max:.3g} (delta={release.delta:g})"
    return note


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:500]
