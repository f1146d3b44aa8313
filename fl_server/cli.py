"""The `fedmsr` command line.

Errors are one line on stderr, `error: <field>: <what is wrong>`, with a non-zero exit:
2 for bad input (nothing was started or written), 1 for a run that failed, 3 for a run
that stopped cleanly because the devices' privacy budgets were exhausted (`fedmsr run`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.table import Table

from fl_server.cli_budget import budget_app
from fl_server.cli_eval import eval_command
from fl_server.cli_fleet import db_app, device_app, fleet_app, pki_app, superlink_app
from fl_server.cli_leakage import leakage_app
from fl_server.cli_monitor import monitor as monitor_command
from fl_server.config import ConfigError, RunConfig
from fl_server.history import read_history
from fl_server.registry.db import ENV_VAR as DB_ENV_VAR
from fl_server.registry.db import RegistryError, registry_configured
from fl_server.run_status import RunStatus

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="fedmsr: federated privatization encoders.")
console = Console()
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1
#: Too few devices could afford another round: stopped cleanly, final model written.
EXIT_BUDGET_EXHAUSTED = 3


@app.callback()
def _root(
    db: Annotated[str | None, typer.Option(
        "--db", help="Registry database URL (else $FEDMSR_DB, else sqlite:///fedmsr.db).")] = None,
) -> None:
    """fedmsr: federated training of Minimal Sufficient Representations for life-log video."""
    if db:  # kept in the environment: subcommands and the engine subprocess read it there
        os.environ[DB_ENV_VAR] = db


app.add_typer(db_app, name="db")
app.add_typer(fleet_app, name="fleet")
app.add_typer(pki_app, name="pki")
app.add_typer(superlink_app, name="superlink")
app.add_typer(device_app, name="device")
app.add_typer(budget_app, name="budget")
app.add_typer(leakage_app, name="leakage")


@app.command()
def run(
    devices: Annotated[int, typer.Option(help="Synthetic fleet size (virtual SuperNodes).")] = 8,
    rounds: Annotated[int, typer.Option(help="Federation rounds.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed for data, model, sampling and training.")] = 0,
    dp_sgd: Annotated[bool, typer.Option("--dp-sgd", help="Deprecated alias of --dp local.")
                      ] = False,
    noise_multiplier: Annotated[float, typer.Option(help="DP-SGD noise multiplier sigma.")] = 1.0,
    clip: Annotated[float, typer.Option(help="DP-SGD per-example clipping norm C.")] = 1.0,
    utility: Annotated[str, typer.Option(help="supervised | ssl | both.")] = "supervised",
    beta: Annotated[float, typer.Option(help="VIB weight on KL(q(z|x) || N(0, I)).")] = 0.01,
    clips_per_day: Annotated[int, typer.Option(help="Clips each device films per day.")] = 8,
    days: Annotated[int, typer.Option(help="Training days of footage per device.")] = 4,
    image_size: Annotated[int, typer.Option(help="Frame size: 32 or 64.")] = 32,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 1,
    fraction_train: Annotated[float, typer.Option(help="Fraction of devices per round.")] = 1.0,
    min_devices: Annotated[int, typer.Option(
        help="Fewest devices whose updates make a round (fewer: the round fails).")] = 1,
    round_timeout: Annotated[float, typer.Option(
        help="Seconds a round waits for training replies; later ones are dropped.")] = 600.0,
    runs_dir: Annotated[str, typer.Option(help="Where runs/<run-id>/ are written.")] = "runs",
    run_id: Annotated[str, typer.Option(help="Run id (default: time + random suffix).")] = "",
    resume: Annotated[str | None, typer.Option(help="Continue the run with this id.")] = None,
    metrics_port: Annotated[int, typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT "
                                              "while the run lives (0: any free port, written to "
                                              "metrics.json; -1: off).")] = -1,
    metrics_linger_s: Annotated[float, typer.Option(help="Keep the metrics endpoint up this many "
                                                    "seconds after the run ends.")] = 0.0,
    secure_aggregation: Annotated[bool, typer.Option(
        "--secure-aggregation", help="SecAgg+: the server learns only the sum of updates.")] = False,
    neighbours: Annotated[int, typer.Option(help="SecAgg+ neighbours per device "
                                            "(0: 2*ceil(log2 n)).")] = 0,
    threshold: Annotated[int, typer.Option(help="SecAgg+ Shamir threshold (0: floor(k/2)+1).")] = 0,
    aggregation: Annotated[str, typer.Option(
        help="fedavg | median | trimmed-mean | krum | multikrum | bulyan "
             "(docs/robustness.md).")] = "fedavg",
    byzantine: Annotated[int, typer.Option(
        help="Hostile devices per round a robust --aggregation must tolerate.")] = 1,
    trim_fraction: Annotated[float, typer.Option(
        help="trimmed-mean: fraction cut from each tail.")] = 0.2,
    max_update_norm: Annotated[float, typer.Option(
        help="Drop an update farther than this (L2) from the global model.")] = 100.0,
    superlink: Annotated[str | None, typer.Option(
        help="Run on Flower's deployment engine: HOST:PORT of a running `fedmsr superlink "
             "start` whose enrolled devices' SuperNodes train (default: simulation).")] = None,
    collect_every: Annotated[int, typer.Option(
        help="Every N rounds, collect privatized representations from the devices and track "
             "leakage (0: off; needs the registry; docs/representations.md).")] = 0,
    collect_clips: Annotated[int, typer.Option(
        help="Representations each device uploads per collection (fixed batch size).")] = 16,
    info_bits_cap: Annotated[float, typer.Option(
        help="Cap on each device's uploaded information, bits (0: registry caps only).")] = 0.0,
    leakage_alert: Annotated[float, typer.Option(
        help="Flag the fleet when a leakage curve's PL(k) - PL(1) reaches this.")] = 0.2,
    dp: Annotated[str, typer.Option(
        help="none | local (DP-SGD on devices) | central (DP-FedAvg, server noise) | both "
             "(docs/privacy-accounting.md).")] = "none",
    epsilon_cap: Annotated[float, typer.Option(
        help="Epsilon cap of devices the registry gives none (0: registry caps only).")] = 0.0,
    delta: Annotated[float, typer.Option(help="Delta every budget is accounted at.")] = 1e-5,
    client_sample_rate: Annotated[float, typer.Option(
        help="Central DP: Poisson probability q that a device takes part in a round.")] = 0.5,
    central_noise: Annotated[float, typer.Option(
        help="Central DP: noise multiplier sigma (noise std / update clip).")] = 1.0,
    central_clip: Annotated[float, typer.Option(
        help="Central DP: L2 clip C of each device's model update (on the device).")] = 1.0,
    target_epsilon: Annotated[float, typer.Option(
        help="Central DP: calibrate sigma so the planned rounds reach this epsilon "
             "(0: use --central-noise).")] = 0.0,
) -> None:
    """Run a federation on Flower's simulation engine (embedded defaults), or a SuperLink."""
    params = dict(locals())
    if resume is None:  # options checked before the engine's imports: a typo costs a second
        with _flag_names():
            checked = _checked_run_config(params)
    from fl_server import deployment_run, dp_modes
    from fl_server.deployment import operator_flwr_home
    from fl_server.launcher import (
        launch_on_superlink,
        launch_simulation,
        load_run_for_resume,
    )

    if superlink is not None:  # before anything is written: the SuperLink must answer
        deployment_run.check_superlink(deployment_run.check_address(superlink),
                                       operator_flwr_home())
    if resume is not None:
        given = {name for name, default in _RUN_DEFAULTS.items()
                 if params[name] != default and name != "runs_dir"}
        if given:
            _fail(f"--resume: the run continues with its saved configuration; "
                  f"drop {', '.join('--' + n.replace('_', '-') for n in sorted(given))}")
        try:
            cfg = load_run_for_resume(runs_dir, resume)
        except ConfigError as exc:
            raise ConfigError("--resume", exc.problem) from None
        deployment_run.check_same_engine(cfg, superlink)
    else:
        if epsilon_cap and not registry_configured():
            _fail("--epsilon-cap: per-device budgets live in the fleet registry; run `fedmsr "
                  "db upgrade` and enroll the fleet first (or pass --db URL)")
        if collect_every and not registry_configured():
            _fail("--collect-every: collection stores representations in the registry; run "
                  "`fedmsr db upgrade` and enroll the fleet first (or pass --db URL)")
        with _flag_names():
            cfg = _new_run_config(checked, params)
    console.print(f"[bold]run[/] {cfg.run_id}: {cfg.devices} devices, {cfg.rounds} rounds, "
                  f"{dp_modes.describe(cfg)}"
                  f" -> {cfg.run_dir()}")
    if superlink is None:
        status = launch_simulation(cfg, console)
    else:
        status = launch_on_superlink(deployment_run.for_deployment(cfg, superlink), superlink,
                                     console)
    _finish_run(cfg, status)


def _checked_run_config(p: dict[str, Any]) -> RunConfig:
    """`fedmsr run`'s options -> a validated RunConfig (DP options not applied yet)."""
    return RunConfig(
        devices=p["devices"], rounds=p["rounds"], seed=p["seed"], dp_sgd=p["dp_sgd"],
        noise_multiplier=p["noise_multiplier"], clip_norm=p["clip"], utility=p["utility"],
        beta=p["beta"], clips_per_day=p["clips_per_day"], days=p["days"],
        image_size=p["image_size"], local_epochs=p["local_epochs"],
        fraction_train=p["fraction_train"], min_train_devices=p["min_devices"],
        round_timeout_s=p["round_timeout"], runs_dir=p["runs_dir"], run_id=p["run_id"],
        metrics_port=p["metrics_port"], metrics_linger_s=p["metrics_linger_s"],
        secure_aggregation=p["secure_aggregation"], secagg_neighbours=p["neighbours"],
        secagg_threshold=p["threshold"], aggregation=p["aggregation"],
        byzantine_devices=p["byzantine"], trim_fraction=p["trim_fraction"],
        max_update_norm=p["max_update_norm"], collect_every=p["collect_every"],
        collect_clips=p["collect_clips"], info_bits_cap=p["info_bits_cap"],
        leakage_alert=p["leakage_alert"]).validate()


def _new_run_config(cfg: RunConfig, p: dict[str, Any]) -> RunConfig:
    """A checked RunConfig + the DP options -> prepared (run dir written)."""
    from fl_server import dp_modes
    from fl_server.launcher import prepare_new_run

    return prepare_new_run(dp_modes.with_run_options(
        cfg, dp=p["dp"], dp_sgd_alias=p["dp_sgd"], epsilon_cap=p["epsilon_cap"],
        delta=p["delta"], client_sample_rate=p["client_sample_rate"],
        central_noise=p["central_noise"], central_clip=p["central_clip"],
        target_epsilon=p["target_epsilon"]))


#: RunConfig fields whose `fedmsr run` option has another name (errors name the option).
_OPTION_OF_FIELD = {"clip_norm": "clip", "min_train_devices": "min-devices",
                    "round_timeout_s": "round-timeout", "byzantine_devices": "byzantine",
                    "secagg_neighbours": "neighbours", "secagg_threshold": "threshold",
                    "dp_sgd": "dp-sgd"}


@contextlib.contextmanager
def _flag_names() -> Iterator[None]:
    """A ConfigError about a field `fedmsr run` has an option for names that option."""
    try:
        yield
    except ConfigError as exc:
        option = _OPTION_OF_FIELD.get(exc.field_name, exc.field_name.replace("_", "-"))
        if option.replace("-", "_") not in _RUN_DEFAULTS:
            raise
        raise ConfigError(f"--{option}", exc.problem) from None


def _finish_run(cfg: RunConfig, status: RunStatus) -> None:
    """History table, then the exit code the run's status calls for."""
    _print_history(cfg.run_dir())
    if status.status == "budget-exhausted":  # a clean stop, not a failure: its own exit code
        print(f"budget-exhausted: run {cfg.run_id} stopped after {status.completed_rounds} of "
              f"{status.planned_rounds} rounds: {status.reason}", file=sys.stderr)
        raise typer.Exit(EXIT_BUDGET_EXHAUSTED)
    if status.status != "completed":
        print(f"error: run {cfg.run_id} {status.status} after {status.completed_rounds} of "
              f"{status.planned_rounds} rounds: {status.reason}", file=sys.stderr)
        raise typer.Exit(EXIT_RUN_FAILED)
    console.print(f"[green]completed[/] {cfg.run_id}: history, checkpoints and final model in "
                  f"{cfg.run_dir()}")


_RUN_DEFAULTS = {
    "devices": 8, "rounds": 3, "seed": 0, "dp_sgd": False, "noise_multiplier": 1.0, "clip": 1.0,
    "utility": "supervised", "beta": 0.01, "clips_per_day": 8, "days": 4, "image_size": 32,
    "local_epochs": 1, "fraction_train": 1.0, "min_devices": 1, "round_timeout": 600.0,
    "runs_dir": "runs", "run_id": "",
    "metrics_port": -1, "metrics_linger_s": 0.0,
    "secure_aggregation": False, "neighbours": 0, "threshold": 0,
    "aggregation": "fedavg", "byzantine": 1, "trim_fraction": 0.2, "max_update_norm": 100.0,
    "collect_every": 0, "collect_clips": 16, "info_bits_cap": 0.0, "leakage_alert": 0.2,
    "dp": "none", "epsilon_cap": 0.0, "delta": 1e-5, "client_sample_rate": 0.5,
    "central_noise": 1.0, "central_clip": 1.0, "target_epsilon": 0.0,
}
app.command("monitor")(monitor_command)
app.command("eval")(eval_command)


def _print_history(run_dir: Path) -> None:
    history = read_history(run_dir)
    if not history:
        return
    table = Table(title=f"history of {run_dir.name}")
    for column in ("round", "loss", "KL bits", "utility acc", "identity acc", "devices", "wall s"):
        table.add_column(column, justify="right")
    for r in history:
        table.add_row(str(r["round"]), f"{r['loss']:.4f}", f"{r['kl_bits']:.2f}",
                      f"{r['utility_acc']:.3f}", f"{r['identity_acc']:.3f}",
                      f"{r['responded']}/{r['sampled']}", f"{r['wall_s']:.1f}")
    console.print(table)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(EXIT_BAD_INPUT)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: map every expected error to one line and an exit code."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="fedmsr", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except click.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ConfigError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
