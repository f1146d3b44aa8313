"""The `fedmsr` command line.

Errors are one line on stderr, `error: <field>: <what is wrong>`, with a non-zero exit:
2 for bad input (nothing was started or written), 1 for a run that failed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from fl_server.cli_budget import budget_app
from fl_server.cli_eval import eval_command
from fl_server.cli_fleet import db_app, device_app, fleet_app, pki_app, superlink_app
from fl_server.cli_monitor import monitor as monitor_command
from fl_server.config import ConfigError, RunConfig
from fl_server.history import read_history
from fl_server.registry.db import ENV_VAR as DB_ENV_VAR
from fl_server.registry.db import RegistryError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="fedmsr: federated privatization encoders.")
console = Console()
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1


@app.callback()
def _root(
    db: Annotated[Optional[str], typer.Option(
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


@app.command()
def run(
    devices: Annotated[int, typer.Option(help="Synthetic fleet size (virtual SuperNodes).")] = 8,
    rounds: Annotated[int, typer.Option(help="Federation rounds.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed for data, model, sampling and training.")] = 0,
    dp_sgd: Annotated[bool, typer.Option("--dp-sgd", help="Train on devices with DP-SGD.")] = False,
    noise_multiplier: Annotated[float, typer.Option(help="DP-SGD noise multiplier sigma.")] = 1.0,
    clip: Annotated[float, typer.Option(help="DP-SGD per-example clipping norm C.")] = 1.0,
    utility: Annotated[str, typer.Option(help="supervised | ssl | both.")] = "supervised",
    beta: Annotated[float, typer.Option(help="VIB weight on KL(q(z|x) || N(0, I)).")] = 0.01,
    clips_per_day: Annotated[int, typer.Option(help="Clips each device films per day.")] = 8,
    days: Annotated[int, typer.Option(help="Training days of footage per device.")] = 4,
    image_size: Annotated[int, typer.Option(help="Frame size: 32 or 64.")] = 32,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 1,
    fraction_train: Annotated[float, typer.Option(help="Fraction of devices per round.")] = 1.0,
    runs_dir: Annotated[str, typer.Option(help="Where runs/<run-id>/ are written.")] = "runs",
    run_id: Annotated[str, typer.Option(help="Run id (default: time + random suffix).")] = "",
    resume: Annotated[Optional[str], typer.Option(help="Continue the run with this id.")] = None,
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
) -> None:
    """Run a federation on Flower's simulation engine (embedded defaults)."""
    from fl_server.launcher import launch_simulation, load_run_for_resume, prepare_new_run

    params = dict(locals())
    if resume is not None:
        given = {name for name, default in _RUN_DEFAULTS.items()
                 if params[name] != default and name != "runs_dir"}
        if given:
            _fail(f"--resume: the run continues with its saved configuration; "
                  f"drop {', '.join('--' + n.replace('_', '-') for n in sorted(given))}")
        cfg = load_run_for_resume(runs_dir, resume)
    else:
        cfg = prepare_new_run(RunConfig(
            devices=devices, rounds=rounds, seed=seed, dp_sgd=dp_sgd,
            noise_multiplier=noise_multiplier, clip_norm=clip, utility=utility, beta=beta,
            clips_per_day=clips_per_day, days=days, image_size=image_size,
            local_epochs=local_epochs, fraction_train=fraction_train, runs_dir=runs_dir,
            run_id=run_id, metrics_port=metrics_port,
            metrics_linger_s=metrics_linger_s, secure_aggregation=secure_aggregation,
            secagg_neighbours=neighbours, secagg_threshold=threshold).validate())
    console.print(f"[bold]run[/] {cfg.run_id}: {cfg.devices} devices, {cfg.rounds} rounds, "
                  f"{'DP-SGD sigma=' + str(cfg.noise_multiplier) if cfg.dp_sgd else 'no DP'}"
                  f" -> {cfg.run_dir()}")
    status = launch_simulation(cfg, console)
    _print_history(cfg.run_dir())
    if status.status != "completed":
        print(f"error: run {cfg.run_id} {status.status} after {status.completed_rounds} of "
              f"{status.planned_rounds} rounds: {status.reason}", file=sys.stderr)
        raise typer.Exit(EXIT_RUN_FAILED)
    console.print(f"[green]completed[/] {cfg.run_id}: history, checkpoints and final model in "
                  f"{cfg.run_dir()}")


_RUN_DEFAULTS = {
    "devices": 8, "rounds": 3, "seed": 0, "dp_sgd": False, "noise_multiplier": 1.0, "clip": 1.0,
    "utility": "supervised", "beta": 0.01, "clips_per_day": 8, "days": 4, "image_size": 32,
    "local_epochs": 1, "fraction_train": 1.0, "runs_dir": "runs", "run_id": "",
    "metrics_port": -1, "metrics_linger_s": 0.0,
    "secure_aggregation": False, "neighbours": 0, "threshold": 0,
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
