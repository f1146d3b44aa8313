"""`fedmsr runs list|show`: the operator's runs, from the runs directory and the registry.

`fedmsr runs list [--runs-dir DIR] [--json]`: one row per run: id, status (running,
completed, failed, budget-exhausted, interrupted; `running (stale)` when its engine is
gone), rounds done/planned, DP mode, start, duration, the registry's run id (`-`: not in
the registry) and what the two sources disagree on.

`fedmsr runs show ID [--runs-dir DIR] [--json]`: the run's configuration, one row per
finished round (devices sampled / trained / rejected / failed, held-out loss, KL, probe
accuracies, the largest epsilon a device spent in the run by then, wall time), the status
reason, and where its files are.

The data comes from `fl_server.run_catalog`; this module only renders it: rich tables on a
terminal, plain aligned columns in a pipe, stable keys with `--json`. An unknown id is one
line naming the closest ids, exit 2.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from fl_server import run_catalog
from fl_server.cli.errors import fail
from fl_server.cli.table import print_table
from fl_server.run_catalog import CatalogError, RoundRow, RunDetail, RunSummary

runs_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                       help="The runs: their status, rounds, DP mode and files.")

RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Where `fedmsr run` wrote runs.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON (stable keys).")]


@runs_app.command("list")
def list_runs(runs_dir: RunsDir = Path("runs"), as_json: AsJson = False) -> None:
    """Every run in the runs directory and the registry, oldest first."""
    try:
        runs = run_catalog.list_runs(runs_dir)
    except CatalogError as exc:
        fail("--runs-dir", str(exc))
    if as_json:
        print(json.dumps({"runs_dir": str(runs_dir), "runs": [_summary_json(r) for r in runs]},
                         indent=2))
        return
    if not runs:
        where = str(runs_dir) if runs_dir.is_dir() else f"{runs_dir} (no such directory)"
        print(f"no runs in {where} or in the registry; `fedmsr run` starts one")
        return
    print_table(("id", "status", "rounds", "dp", "started (UTC)", "duration", "registry id",
                 "notes"),
                [(r.run_id, _status(r), _rounds(r), r.dp_mode or "-", _when(r),
                  _duration(r.duration_s), r.run_id if r.in_registry else "-",
                  "; ".join(r.notes)) for r in runs],
                right=("rounds", "duration"))


@runs_app.command("show")
def show(
    run_id: Annotated[str, typer.Argument(metavar="ID", help="The run's id.")],
    runs_dir: RunsDir = Path("runs"),
    as_json: AsJson = False,
) -> None:
    """One run: configuration, per-round table, status reason and files."""
    try:
        detail = run_catalog.show_run(runs_dir, run_id)
    except CatalogError as exc:
        fail("ID", str(exc))
    if detail is None:
        _unknown(run_id, runs_dir)
    if as_json:
        print(json.dumps(_detail_json(detail), indent=2))
        return
    _print_detail(detail)


def _unknown(run_id: str, runs_dir: Path) -> NoReturn:
    try:
        close = run_catalog.suggestions(run_id, run_catalog.known_ids(runs_dir))
    except CatalogError:
        close = []
    hint = f"did you mean {' or '.join(close)}?" if close \
        else "`fedmsr runs list` shows the runs"
    fail("ID", f"no run {run_id!r} in {runs_dir} or in the registry; {hint}")


# -- text ------------------------------------------------------------------------------------

def _status(r: RunSummary) -> str:
    return f"{r.status} (stale)" if r.stale else r.status


def _rounds(r: RunSummary) -> str:
    done = "?" if r.completed_rounds is None else str(r.completed_rounds)
    planned = "?" if r.planned_rounds is None else str(r.planned_rounds)
    return f"{done}/{planned}"


def _when(r: RunSummary) -> str:
    return r.started.strftime("%Y-%m-%d %H:%M:%S") if r.started else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _print_detail(d: RunDetail) -> None:
    s = d.summary
    print(f"run {s.run_id}: {_status(s)}, {_rounds(s)} rounds")
    if s.reason:
        print(f"reason: {s.reason}")
    dp = s.dp_mode or "-"
    if s.dp_mode not in (None, "none") and d.delta is not None:
        dp += f" (delta={d.delta:g})"
    print(f"dp: {dp}   started: {_when(s)} UTC   duration: {_duration(s.duration_s)}   "
          f"registry: {s.run_id if s.in_registry else 'not in the registry'}")
    for note in s.notes:
        print(f"note: {note}")
    print()
    print("config:")
    settings = "  ".join(f"{key}={json.dumps(d.config[key])}" for key in sorted(d.config))
    print(textwrap.fill(settings, width=100, initial_indent="  ", subsequent_indent="  ",
                        break_long_words=False, break_on_hyphens=False))
    print()
    if d.rounds:
        epsilon = bool(d.epsilon_source)
        columns = ["round", "sampled", "trained", "rejected", "failed", "loss", "KL bits",
                   "utility", "identity", *(["epsilon"] if epsilon else []), "wall s"]
        print_table(columns, [_round_cells(r, epsilon) for r in d.rounds],
                    title=f"rounds of {s.run_id}", right=columns)
        if epsilon:
            print(f"epsilon: the largest any device spent in this run by the round's end "
                  f"(RDP bound at delta={d.delta:g}; from the {d.epsilon_source}); "
                  "`fedmsr budget show` has each device's total")
        aborted = [r for r in d.rounds if r.aborted]
        for r in aborted:
            print(f"round {r.round} aborted: {r.aborted}")
    else:
        print("rounds: none finished")
    print()
    _print_files(d)


def _round_cells(r: RoundRow, epsilon: bool) -> list[str]:
    cells = [str(r.round), str(r.sampled), str(r.trained),
             "-" if r.rejected is None else str(r.rejected), str(r.failed), f"{r.loss:.4f}",
             f"{r.kl_bits:.2f}", f"{r.utility_acc:.3f}", f"{r.identity_acc:.3f}"]
    if epsilon:
        cells.append("-" if r.epsilon is None else f"{r.epsilon:.3f}")
    return [*cells, f"{r.wall_s:.1f}"]


def _print_files(d: RunDetail) -> None:
    f = d.files
    if f.run_dir is None:
        print("files: no run directory here (the registry keeps the configuration and the "
              "rounds; pass --runs-dir where the run was written)")
        return
    print(f"files: {f.run_dir}")
    for path in f.present:
        print(f"  {path.name}")
    if f.latest_checkpoint is not None:
        print(f"  checkpoints/ ({f.checkpoints}; latest {f.latest_checkpoint.name})")
    print("  logs: not kept in the run directory (`fedmsr run` prints them to its terminal)")


# -- JSON ------------------------------------------------------------------------------------

def _summary_json(r: RunSummary) -> dict[str, Any]:
    return {"id": r.run_id, "status": r.status, "stale": r.stale, "reason": r.reason,
            "rounds_done": r.completed_rounds, "rounds_planned": r.planned_rounds,
            "dp_mode": r.dp_mode, "started": r.started.isoformat() if r.started else None,
            "duration_s": r.duration_s, "run_dir": str(r.run_dir) if r.run_dir else None,
            "registry_run_id": r.run_id if r.in_registry else None, "notes": list(r.notes)}


def _detail_json(d: RunDetail) -> dict[str, Any]:
    f = d.files
    return {
        **_summary_json(d.summary),
        "config": dict(d.config),
        "delta": d.delta,
        "epsilon_source": d.epsilon_source or None,
        "rounds": [{"round": r.round, "sampled": r.sampled, "trained": r.trained,
                    "rejected": r.rejected, "failed": r.failed, "loss": r.loss,
                    "kl_bits": r.kl_bits, "utility_acc": r.utility_acc,
                    "identity_acc": r.identity_acc, "epsilon": r.epsilon, "wall_s": r.wall_s,
                    "aborted": r.aborted} for r in d.rounds],
        "files": {"run_dir": str(f.run_dir) if f.run_dir else None,
                  "present": [str(p) for p in f.present], "checkpoints": f.checkpoints,
                  "latest_checkpoint": str(f.latest_checkpoint) if f.latest_checkpoint
                  else None, "logs": None},
    }
