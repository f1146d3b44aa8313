"""Every run the operator has, joined from the two places that know about runs.

A run leaves a directory (`runs/<id>/`: run.json, status.json, history.json,
checkpoints/, ...) and, when its fleet came from the registry, a row in the registry's
`runs` table (with its rounds and, under DP, its privacy-ledger events). Either can be
missing: a run without a registry has no row; a registry row outlives a deleted run
directory, and a run started from another working directory has its files elsewhere. The
catalog joins both by run id and says which side is missing instead of failing.

Whatever `fedmsr runs list/show` shows comes from here, as frozen dataclasses; the CLI only
renders. The status is the run's status file when there is one (the only place that says
whether a run succeeded, `fl_server.run_status`), else the registry's; two statuses no
file spells are derived for the reader: `interrupted` (a run stopped by SIGTERM/SIGINT to
its launcher, recorded as failed with the reason `interrupted by ...`: `--resume` continues
it) and a `running` run whose recorded engine group is gone (`stale`: its launcher was
killed).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fl_server.checkpoint import checkpoint_dir
from fl_server.config import DP_MODES
from fl_server.registry.db import registry_configured, resolve_url, session_scope
from fl_server.registry.models import PrivacyEvent, Round, Run, as_utc
from fl_server.run_status import RunStatus
from privacy.wire.round_record import RoundRecord

#: A failed run whose reason starts so was stopped by a signal to its launcher.
INTERRUPTED_PREFIX = "interrupted by "
#: Files a run directory may hold, in the order `fedmsr runs show` lists them.
RUN_FILES = ("run.json", "status.json", "history.json", "history.csv", "final_model.npz",
             "final_model.json", "leakage.json", "secagg-identities.json", "engine.json")


class CatalogError(ValueError):
    """A run's file cannot be read; the message names the file."""


@dataclass(frozen=True)
class RunSummary:
    """One run, as `fedmsr runs list` shows it (None: neither source records the value)."""

    run_id: str
    #: running | completed | failed | budget-exhausted | interrupted | unknown
    status: str
    reason: str
    completed_rounds: int | None
    planned_rounds: int | None
    #: none | local | central | both (`fedmsr run --dp`)
    dp_mode: str | None
    started: dt.datetime | None
    #: Start to the status's last update (now, for a live run).
    duration_s: float | None
    run_dir: Path | None
    in_registry: bool
    #: `running` in the status file, but the engine group it records is gone.
    stale: bool = False
    #: What the two sources disagree on or lack, one sentence each.
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoundRow:
    """One finished round (None: the source does not record it; the registry keeps no
    rejections, no probes' chance levels, no DP events of devices)."""

    round: int
    sampled: int
    trained: int
    rejected: int | None
    failed: int
    loss: float
    kl_bits: float
    utility_acc: float
    identity_acc: float
    #: The largest epsilon any device spent in this run up to this round (RDP bound at
    #: the run's delta), None in a run without DP.
    epsilon: float | None
    wall_s: float
    aborted: str | None = None


@dataclass(frozen=True)
class RunFiles:
    """Where a run's files are (absent ones are left out)."""

    run_dir: Path | None
    present: tuple[Path, ...]
    checkpoints: int
    latest_checkpoint: Path | None


@dataclass(frozen=True)
class RunDetail:
    """One run, as `fedmsr runs show` shows it."""

    summary: RunSummary
    config: Mapping[str, Any]
    rounds: tuple[RoundRow, ...]
    #: Where the per-round epsilon comes from: "privacy ledger", "history" or "" (no DP).
    epsilon_source: str
    delta: float | None
    files: RunFiles


# -- reading ---------------------------------------------------------------------------------

def list_runs(runs_dir: Path) -> list[RunSummary]:
    """Every run in `runs_dir` and in the registry (where one is configured), oldest first."""
    on_disk = {p.name: p for p in _run_dirs(runs_dir)}
    rows = _registry_runs(None)
    ids = sorted(set(on_disk) | set(rows))
    runs = [_listed(run_id, on_disk.get(run_id), rows.get(run_id), runs_dir) for run_id in ids]
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return sorted(runs, key=lambda r: (r.started or epoch, r.run_id))


def _listed(run_id: str, run_dir: Path | None, row: _RegistryRun | None,
            runs_dir: Path) -> RunSummary:
    """A run's row in the list; one unreadable file makes that row say so, not the list fail."""
    try:
        return _summary(run_id, run_dir, row, runs_dir)
    except CatalogError as exc:
        return RunSummary(run_id, "unreadable", str(exc), None, None, None, None, None,
                          run_dir, row is not None, notes=(str(exc),))


def known_ids(runs_dir: Path) -> list[str]:
    return sorted({p.name for p in _run_dirs(runs_dir)} | set(_registry_runs(None)))


def show_run(runs_dir: Path, run_id: str) -> RunDetail | None:
    """The run with this id, or None when neither the directory nor the registry has it."""
    run_dir = runs_dir / run_id
    on_disk = run_dir if (run_dir / "run.json").is_file() or (run_dir / "status.json").is_file() \
        else None
    row = _registry_runs(run_id).get(run_id)
    if on_disk is None and row is None:
        return None
    summary = _summary(run_id, on_disk, row, runs_dir)
    config = _config(on_disk, row)
    delta = _float(config.get("delta"))
    history = read_history_file(on_disk) if on_disk is not None else None
    ledger = _ledger_events(run_id) if row is not None else {}
    epsilons, source = _epsilons(ledger, history, delta)
    if history is not None:
        rounds = tuple(_row_of_record(r, epsilons.get(r.round)) for r in history)
    else:
        rounds = tuple(dataclasses.replace(r, epsilon=epsilons.get(r.round))
                       for r in _registry_rounds(run_id))
    return RunDetail(summary, config, rounds, source, delta, _files(on_disk))


def read_history_file(run_dir: Path) -> list[RoundRecord] | None:
    """The run's history.json (None: no round has finished); CatalogError naming a file
    that is not one."""
    path = run_dir / "history.json"
    if not path.exists():
        return None
    try:
        rows = json.loads(path.read_text())
        if not isinstance(rows, list):
            raise ValueError("not a JSON list of rounds")
        return [RoundRecord.from_json(row) for row in rows]
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise CatalogError(f"{path}: unreadable history ({_first_line(exc)})") from None


def _run_dirs(runs_dir: Path) -> list[Path]:
    """Run directories: a subdirectory holding run.json or status.json."""
    if runs_dir.exists() and not runs_dir.is_dir():
        raise CatalogError(f"{runs_dir}: not a directory")
    if not runs_dir.is_dir():
        return []
    return sorted(p for p in runs_dir.iterdir() if p.is_dir()
                  and ((p / "run.json").is_file() or (p / "status.json").is_file()))


@dataclass(frozen=True)
class _RegistryRun:
    """A registry runs row, detached from its session."""

    status: str
    planned_rounds: int
    completed_rounds: int
    dp_sgd: bool
    config_json: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    reason: str


def _registry_runs(run_id: str | None) -> dict[str, _RegistryRun]:
    """Registry rows by id (every run, or one); empty where no registry is configured."""
    if not registry_configured():
        return {}
    with session_scope(resolve_url()) as session:
        query = session.query(Run) if run_id is None else session.query(Run).filter(
            Run.id == run_id)
        return {r.id: _RegistryRun(r.status, r.planned_rounds, r.completed_rounds or 0,
                                   r.dp_sgd, r.config_json, as_utc(r.started_at),
                                   as_utc(r.finished_at) if r.finished_at else None,
                                   r.reason or "") for r in query}


def _registry_rounds(run_id: str) -> list[RoundRow]:
    """The registry's rounds of a run (it keeps no rejections and no DP figures)."""
    with session_scope(resolve_url()) as session:
        return [RoundRow(r.number, r.sampled, r.responded, None, r.failed, r.loss, r.kl_bits,
                         r.utility_acc, r.identity_acc, None, r.wall_s)
                for r in session.query(Round).filter(Round.run_id == run_id)
                .order_by(Round.number)]


def _ledger_events(run_id: str) -> dict[int, list[tuple[int, float, float, int]]]:
    """Round -> (device id, q, sigma, steps) of every release the ledger charged in the run."""
    out: dict[int, list[tuple[int, float, float, int]]] = defaultdict(list)
    with session_scope(resolve_url()) as session:
        for e in session.query(PrivacyEvent).filter(PrivacyEvent.run_id == run_id):
            out[e.round_number].append((e.device_id, e.sample_rate, e.noise_multiplier,
                                        e.steps))
    return dict(out)


def _summary(run_id: str, run_dir: Path | None, row: _RegistryRun | None,
             runs_dir: Path) -> RunSummary:
    notes: list[str] = []
    status = _status_file(run_dir) if run_dir is not None else None
    config = _config(run_dir, row)
    if run_dir is None:
        notes.append(f"no run directory in {runs_dir}")
    if row is None and config.get("device_indices") is None:
        notes.append("not in the registry (run without one)")
    elif row is None and not registry_configured():
        notes.append("registry-backed, but no registry is configured here (--db)")
    elif row is None:
        notes.append("not in the registry")
    done: int | None
    planned: int | None
    if status is not None:
        name, reason = status.status, status.reason
        done, planned = status.completed_rounds, status.planned_rounds
        updated: dt.datetime | None = dt.datetime.fromtimestamp(status.updated_unix, dt.UTC)
        if row is not None and row.status != status.status:
            notes.append(f"the registry says {row.status}")
    elif row is not None:
        name, reason = row.status, row.reason
        done, planned, updated = row.completed_rounds, row.planned_rounds, row.finished_at
    else:
        name, reason, done, updated = "unknown", "no status.json", None, None
        planned = _int(config.get("rounds"))
    stale = name == "running" and run_dir is not None and _engine_gone(run_dir)
    if stale:
        notes.append("its engine is gone (launcher killed?): "
                     f"`fedmsr run --resume {run_id}` continues it")
    if name == "failed" and reason.startswith(INTERRUPTED_PREFIX):
        name = "interrupted"
    starts = [t for t in (row.started_at if row is not None else None,
                          _mtime(run_dir / "run.json") if run_dir is not None else None) if t]
    started = min(starts) if starts else None  # run.json is written before the engine starts
    end = dt.datetime.now(dt.UTC) if name == "running" and not stale else updated
    duration = (end - started).total_seconds() if started and end else None
    return RunSummary(run_id, name, reason, done, planned, _dp_mode(config), started,
                      max(duration, 0.0) if duration is not None else None, run_dir,
                      row is not None, stale, tuple(notes))


def _status_file(run_dir: Path) -> RunStatus | None:
    path = run_dir / "status.json"
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        return RunStatus(str(raw["status"]), int(raw["planned_rounds"]),
                         int(raw.get("completed_rounds", 0)), str(raw.get("reason", "")),
                         float(raw.get("updated_unix", 0.0)))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CatalogError(f"{path}: unreadable status ({_first_line(exc)})") from None


def _config(run_dir: Path | None, row: _RegistryRun | None) -> dict[str, Any]:
    """The frozen configuration: run.json, else the registry's copy of it, else empty."""
    if run_dir is not None and (run_dir / "run.json").is_file():
        path = run_dir / "run.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CatalogError(f"{path}: unreadable configuration ({_first_line(exc)})") \
                from None
        if not isinstance(data, dict):
            raise CatalogError(f"{path}: unreadable configuration (not a JSON object)")
        return data
    if row is not None:
        try:
            data = json.loads(row.config_json)
            return data if isinstance(data, dict) else {}
        except ValueError:
            return {"dp_sgd": row.dp_sgd}
    return {}


def _dp_mode(config: Mapping[str, Any]) -> str | None:
    if "dp_sgd" not in config:
        return None
    return DP_MODES[int(bool(config.get("dp_sgd"))) + 2 * int(bool(config.get("central_dp")))]


def _engine_gone(run_dir: Path) -> bool:
    """A `running` run whose recorded engine group has no process left (the launcher was
    killed before it could mark the run); False when there is no record to check (a
    SuperLink run records none)."""
    if not (run_dir / "engine.json").exists():
        return False
    from fl_server.launcher import ENGINE_FILE, EngineRecord, group_members

    record = EngineRecord.read(run_dir / ENGINE_FILE)
    return record is not None and not group_members(record.pgid)


def _epsilons(ledger: Mapping[int, Sequence[tuple[int, float, float, int]]],
              history: Sequence[RoundRecord] | None, delta: float | None
              ) -> tuple[dict[int, float], str]:
    """Round -> the largest epsilon any device spent in the run by then, and the source.

    The privacy ledger (every release charged, central DP and randomized release
    included) where the registry has the run's events; else the DP-SGD events the devices
    reported in the history. RDP bound at the run's delta: cheap for every round.
    """
    events, source = ledger, "privacy ledger"
    if not events and history:
        events = {r.round: [(e.device, e.sample_rate, e.noise_multiplier, e.steps)
                            for e in r.dp_events] for r in history if r.dp_events}
        source = "history"
    if not events or delta is None:
        return {}, ""
    from privacy.accounting import ORDERS, epsilon_from_rdp, step_rdp

    vectors: dict[int, np.ndarray] = {}
    out: dict[int, float] = {}
    for number in range(1, max(events) + 1):
        for device, q, sigma, steps in events.get(number, ()):
            vectors[device] = vectors.get(device, np.zeros_like(ORDERS)) \
                + steps * step_rdp(q, sigma)
        if vectors:
            out[number] = max(float(epsilon_from_rdp(v, delta)) for v in vectors.values())
    return out, source


def _row_of_record(r: RoundRecord, epsilon: float | None) -> RoundRow:
    rejected = sum(int(n) for n in r.rejected.values()) if r.rejected \
        else len(r.rejected_devices)
    return RoundRow(r.round, r.sampled, r.responded, rejected, r.failed, r.loss, r.kl_bits,
                    r.utility_acc, r.identity_acc, epsilon, r.wall_s, r.aborted)


def _files(run_dir: Path | None) -> RunFiles:
    if run_dir is None:
        return RunFiles(None, (), 0, None)
    present = tuple(run_dir / name for name in RUN_FILES if (run_dir / name).exists())
    metas = sorted(checkpoint_dir(run_dir).glob("round-*.json")) \
        if checkpoint_dir(run_dir).is_dir() else []
    return RunFiles(run_dir, present, len(metas), metas[-1] if metas else None)


def _mtime(path: Path) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    except OSError:
        return None


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def suggestions(wanted: str, ids: Iterable[str]) -> list[str]:
    """Run ids close to `wanted` (a typo, a truncated id), best first."""
    import difflib

    known = list(ids)
    prefixed = [i for i in known if i.startswith(wanted) or wanted in i]
    close = difflib.get_close_matches(wanted, known, n=3, cutoff=0.6)
    return list(dict.fromkeys([*prefixed[:3], *close]))[:3]
