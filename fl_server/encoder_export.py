"""`fedmsr encoder export`: a run folder -> the on-device privatizer and its model card.

The model is the run's ``final_model.npz`` / ``final_model.json`` (read as `fedmsr eval
--model` reads it). The card's measured figures come from what the run folder records,
nothing is recomputed from data:

* **KL rate**: ``kl_bits`` of the last round in ``history.json``, the server's probe on its
  held-out evaluation clips (the operator's ``--eval-dataset`` manifest, or the synthetic
  fleet's held-out days) after that round;
* **epsilon**: the (epsilon, delta) this run spent, worst device, at the run's delta,
  reported by the PLD accountant (``privacy.accounting.pld_epsilon``) over the releases
  ``history.json`` records: the DP-SGD events each device reported, and under central DP
  one DP-FedAvg release charged to every eligible device per round that ran it (the
  ledger's rule, docs/privacy-accounting.md). It covers this run only: a device's
  lifetime spend across runs is the registry's (`fedmsr budget`). Without DP, or without
  ``run.json``, the figure is ``null`` with the reason.
"""

from __future__ import annotations

import zipfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fl_server.config import ConfigError, RunConfig
from fl_server.eval_pipeline import EvalInputError, RunModel, load_run_model
from fl_server.history import read_history
from privacy.privatizer_card import EpsilonSpent, KlRate, ModelCard, model_file_name
from privacy.wire.round_record import RoundRecord


class ExportInputError(ValueError):
    """The run folder (or an export option) cannot give a privatizer; the message says why."""


@dataclass(frozen=True)
class RunFacts:
    """What a run folder gives the export: its model and the figures for the card."""

    run_id: str
    model: RunModel
    kl_rate: KlRate
    epsilon: EpsilonSpent


def _config(run_dir: Path) -> RunConfig | None:
    if not (run_dir / "run.json").is_file():
        return None
    try:
        return RunConfig.load(run_dir / "run.json")
    except ConfigError as exc:
        raise ExportInputError(f"{run_dir / 'run.json'}: {exc}") from None


def _history(run_dir: Path) -> list[RoundRecord]:
    try:
        return read_history(run_dir)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise ExportInputError(f"{run_dir / 'history.json'} is unreadable: {exc}") from None


def kl_rate(cfg: RunConfig | None, history: Sequence[RoundRecord]) -> KlRate:
    """The last recorded KL rate of the server's probe, and on which clips."""
    if not history:
        return KlRate(None, None, "history.json records no finished round")
    last = history[-1]
    if cfg is not None and cfg.eval_dataset:
        where = (f"the server's held-out evaluation clips of {cfg.eval_dataset} "
                 "(later half of its days)")
    elif cfg is not None:
        where = "the server's held-out synthetic clips (later half of the held-out days)"
    else:
        where = "the server's held-out evaluation clips (run.json missing: which set unknown)"
    return KlRate(float(last.kl_bits), int(last.round), where)


def run_epsilon(cfg: RunConfig | None, history: Sequence[RoundRecord]) -> EpsilonSpent:
    """The worst device's (epsilon, delta) over this run's recorded DP releases."""
    from privacy.accounting import DpEvent, pld_epsilon

    if cfg is None:
        return EpsilonSpent(None, None, "run.json is missing: the run's DP mode is unknown")
    if cfg.dp_mode == "none":
        return EpsilonSpent(None, None, "the run trained without DP (--dp none): the model "
                                        "carries no (epsilon, delta) guarantee")
    from fl_server.dp_modes import central_params

    central = central_params(cfg)
    central_rounds = sum(1 for r in history if r.budget.central_dp is not None)
    shared = [central.event()] * central_rounds if central is not None else []
    per_device: dict[int, list[DpEvent]] = defaultdict(list)
    for record in history:
        for e in record.dp_events:
            if e.steps >= 1:
                per_device[e.device].append(DpEvent(e.sample_rate, e.noise_multiplier, e.steps))
    if not per_device and not shared:
        return EpsilonSpent(0.0, cfg.delta, f"--dp {cfg.dp_mode}: history.json records no "
                                            "DP release")
    histories = {tuple(sorted(events, key=repr)) for events in per_device.values()} or {()}
    eps = max(pld_epsilon([*events, *shared], cfg.delta) for events in histories)
    return EpsilonSpent(float(eps), cfg.delta, (
        f"--dp {cfg.dp_mode}: PLD epsilon at the run's delta, worst of {max(1, len(per_device))} "
        f"device(s), over the DP-SGD events devices reported and {central_rounds} central "
        "DP-FedAvg round(s) in history.json; this run only (lifetime: `fedmsr budget`)"))


def read_run(run_dir: Path) -> RunFacts:
    """The run folder's model and card figures (ExportInputError naming what is wrong)."""
    if not run_dir.is_dir():
        raise ExportInputError(f"{run_dir} is not a run folder (no such directory)")
    npz = run_dir / "final_model.npz"
    if npz.is_file() and not zipfile.is_zipfile(npz):
        raise ExportInputError(f"{npz} is corrupt (not an .npz archive)")
    try:
        model = load_run_model(run_dir)
    except EvalInputError as exc:
        raise ExportInputError(str(exc)) from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ExportInputError(f"{npz} is corrupt: {exc}") from None
    cfg = _config(run_dir)
    history = _history(run_dir)
    return RunFacts(run_dir.name, model, kl_rate(cfg, history), run_epsilon(cfg, history))


def export_run(run_dir: Path, fmt: str, out_dir: Path, payload_dtype: str = "int8") -> ModelCard:
    """Export the run's final model as format ``fmt`` into ``out_dir``."""
    from privacy.encoder import build_model, load_numpy_state
    from privacy.payload import payload_size
    from privacy.privatizer_export import export_privatizer

    try:
        model_file_name(fmt)
    except ValueError as exc:
        raise ExportInputError(str(exc)) from None
    try:
        payload_size(1, payload_dtype)
    except ValueError as exc:
        raise ExportInputError(str(exc)) from None
    facts = read_run(run_dir)
    model = build_model(facts.model.encoder)
    try:
        load_numpy_state(model, facts.model.arrays)
    except ValueError as exc:
        raise ExportInputError(f"{run_dir / 'final_model.npz'}: {exc}") from None
    return export_privatizer(model, fmt, out_dir, run_id=facts.run_id, kl_rate=facts.kl_rate,
                             epsilon=facts.epsilon, payload_dtype=payload_dtype)
