"""`fedmsr run`: start a federation, or resume one, and report how it ended.

Exit codes: 0 completed; 1 the run failed; 2 bad input (nothing was started or written);
3 the run stopped cleanly because too few devices could afford another round (privacy
budgets exhausted; the final model is written); 128 + the signal's number (143 for
SIGTERM, 130 for Ctrl-C) the launcher was interrupted: the engine and every process it
started were stopped, the run marked failed ("interrupted by SIGTERM"), and it can be
continued with `--resume`.

`--config FILE` fills every option the command line leaves at its default
(fl_server/cli/run_file.py); `--dry-run` prints what the run would charge each device's
privacy budget (fl_server/cli/run_forecast.py) and starts and writes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console
from rich.table import Table

from fl_server.cli.errors import fail
from fl_server.cli.run_file import file_named, with_config_file
from fl_server.cli.run_options import (
    DRY_RUN,
    RESUME,
    SUPERLINK,
    config_from_options,
    given_with_resume,
    options_named,
    run_parameters,
)
from fl_server.config import ConfigError, RunConfig
from fl_server.history import read_history
from fl_server.registry.db import registry_configured
from fl_server.run_status import RunStatus

console = Console()
EXIT_RUN_FAILED = 1
#: Too few devices could afford another round: stopped cleanly, final model written.
EXIT_BUDGET_EXHAUSTED = 3
#: SIGTERM / SIGINT to the launcher: exit 128 + the signal number, as a shell would report.
EXIT_INTERRUPTED_BASE = 128


def run(**options: Any) -> None:
    """Run or resume a federation, simulated or on a SuperLink.

    Simulated: Flower's simulation engine on this machine (the default); with
    --superlink, the enrolled devices' SuperNodes train.
    """
    resume = options[RESUME]
    if resume is None:  # options checked before the engine's imports: a typo costs a second
        settings = with_config_file(click.get_current_context(), options)
        options = settings.values
        with file_named(settings):
            checked = config_from_options(options)
        if options[DRY_RUN]:
            from fl_server.cli.run_forecast import print_dry_run

            print_dry_run(_planned_run(checked), deployed=options[SUPERLINK] is not None)
            return
    superlink = options[SUPERLINK]
    from fl_server import deployment_run
    from fl_server.deployment import operator_flwr_home
    from fl_server.launcher import (
        RunInterrupted,
        launch_on_superlink,
        launch_simulation,
        load_run_for_resume,
    )

    if superlink is not None:  # before anything is written: the SuperLink must answer
        deployment_run.check_superlink(deployment_run.check_address(superlink),
                                       operator_flwr_home())
    if resume is not None:
        given = given_with_resume(click.get_current_context())
        if given:
            fail("--resume", "the run continues with its saved configuration; "
                 f"drop {', '.join(given)}")
        try:
            cfg = load_run_for_resume(options["runs_dir"], resume)
        except ConfigError as exc:
            raise ConfigError("--resume", exc.problem) from None
        deployment_run.check_same_engine(cfg, superlink)
    else:
        cfg = _new_run(checked)
        from fl_server.cli.run_forecast import warn_before_run

        warn_before_run(cfg, deployed=superlink is not None)
    console.print(f"[bold]run[/] {cfg.run_id}: {_devices_phrase(cfg)}, {cfg.rounds} rounds, "
                  f"{_dp_phrase(cfg)} -> {cfg.run_dir()}", soft_wrap=True)
    _print_left_out(cfg)
    if superlink is None:
        if cfg.shuffler:  # the simulated devices' out-of-band step: pin today's shuffler
            from fl_server.unlinkable_collection import provision_simulated_devices

            with options_named():
                provision_simulated_devices(cfg)
        try:
            status = launch_simulation(cfg, console)
        except RunInterrupted as exc:
            print(f"error: run {cfg.run_id} {exc.status.status} after "
                  f"{exc.status.completed_rounds} of {exc.status.planned_rounds} rounds: "
                  f"{exc.status.reason}; continue it with --resume {cfg.run_id}",
                  file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED_BASE + exc.signum) from None
    else:
        status = launch_on_superlink(deployment_run.for_deployment(cfg, superlink), superlink,
                                     console)
    _finish_run(cfg, status)


run.__signature__ = run_parameters()  # type: ignore[attr-defined]


def _new_run(cfg: RunConfig) -> RunConfig:
    """A checked config -> the prepared run (central noise calibrated, run dir written)."""
    from fl_server.dp_modes import with_calibrated_noise, with_calibrated_release
    from fl_server.launcher import prepare_new_run

    _check_registry_needs(cfg)
    with options_named():
        if cfg.shuffler:  # before anything is written: the shuffler must answer
            from fl_server.unlinkable_collection import check_shuffler

            check_shuffler(cfg)
        return prepare_new_run(with_calibrated_release(with_calibrated_noise(cfg)))


def _planned_run(cfg: RunConfig) -> RunConfig:
    """What `_new_run` would prepare, without a run id, a run directory or a shuffler:
    the calibrated noise and the registry's devices (read, not written)."""
    from fl_server.dp_modes import with_calibrated_noise, with_calibrated_release
    from fl_server.registry.fleet import fleet_for_new_run

    _check_registry_needs(cfg)
    with options_named():
        return fleet_for_new_run(with_calibrated_release(with_calibrated_noise(cfg)))


def _check_registry_needs(cfg: RunConfig) -> None:
    """Settings that need the fleet registry, refused without one."""
    if cfg.epsilon_cap is not None and not registry_configured():
        fail("--epsilon-cap", "per-device budgets live in the fleet registry; run `fedmsr db "
             "upgrade` and enroll the fleet first (or pass --db URL)")
    if cfg.collect_every and not registry_configured():
        fail("--collect-every", "collection stores representations in the registry; run "
             "`fedmsr db upgrade` and enroll the fleet first (or pass --db URL)")


def _devices_phrase(cfg: RunConfig) -> str:
    """How many devices train: the registry's eligible ones of the synthetic fleet."""
    if cfg.device_indices is None:
        return f"{cfg.devices} devices (no registry: the whole synthetic fleet)"
    return f"{len(cfg.device_indices)} of {cfg.devices} devices (from the registry)"


def _print_left_out(cfg: RunConfig) -> None:
    """Once, under the header: the fleet's devices that take no part, and why."""
    from fl_server.registry.fleet import left_out

    for group in left_out(cfg):
        names = f" ({', '.join(group.names[:5])}{', ...' if len(group.names) > 5 else ''})" \
            if group.names else ""
        console.print(f"  left out, {group.reason}: {len(group.indices)} device(s), "
                      f"index {_index_ranges(group.indices)}{names}", soft_wrap=True,
                      highlight=False)


def _index_ranges(indices: tuple[int, ...]) -> str:
    """(3, 4, 5, 9) -> "3-5, 9"."""
    spans: list[list[int]] = []
    for i in sorted(indices):
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _dp_phrase(cfg: RunConfig) -> str:
    """The run's DP mode in one phrase, for the banner."""
    parts = []
    if cfg.dp_sgd:
        parts.append(f"DP-SGD sigma={cfg.noise_multiplier:g}")
    if cfg.central_dp:
        parts.append(f"central DP q={cfg.client_sample_rate:g} "
                     f"sigma={cfg.central_noise_multiplier:.4g} C={cfg.central_clip_norm:g}")
    if cfg.release_noise_multiplier > 0:
        parts.append(f"randomized release sigma={cfg.release_noise_multiplier:.4g} "
                     f"C={cfg.release_clip:g} (epsilon={cfg.release_epsilon:g} over "
                     f"{cfg.release_horizon_clips} clips per device)")
    if not parts:
        return "no DP"
    cap = f", default cap epsilon={cfg.epsilon_cap:g}" if cfg.epsilon_cap else ""
    return " + ".join(parts) + f" (delta={cfg.delta:g}{cap})"


def _finish_run(cfg: RunConfig, status: RunStatus) -> None:
    """History table, then the exit code the run's status calls for."""
    _print_history(cfg.run_dir())
    if status.status == "budget-exhausted":  # a clean stop, not a failure: its own exit code
        print(f"budget-exhausted: run {cfg.run_id} stopped after {status.completed_rounds} of "
              f"{status.planned_rounds} rounds: {status.summary or status.reason}; `fedmsr "
              f"budget show` lists each device's spend, `fedmsr runs show {cfg.run_id}` the "
              "full reason", file=sys.stderr)
        raise typer.Exit(EXIT_BUDGET_EXHAUSTED)
    if status.status != "completed":
        print(f"error: run {cfg.run_id} {status.status} after {status.completed_rounds} of "
              f"{status.planned_rounds} rounds: {status.reason}", file=sys.stderr)
        raise typer.Exit(EXIT_RUN_FAILED)
    console.print(f"[green]completed[/] {cfg.run_id}: history, checkpoints and final model in "
                  f"{cfg.run_dir()}")


def _print_history(run_dir: Path) -> None:
    history = read_history(run_dir)
    if not history:
        return
    table = Table(title=f"history of {run_dir.name}")
    for column in ("round", "loss", "KL bits", "utility acc", "identity acc", "devices", "wall s"):
        table.add_column(column, justify="right")
    for r in history:
        table.add_row(str(r.round), f"{r.loss:.4f}", f"{r.kl_bits:.2f}",
                      f"{r.utility_acc:.3f}", f"{r.identity_acc:.3f}",
                      f"{r.responded}/{r.sampled}", f"{r.wall_s:.1f}")
    console.print(table)
