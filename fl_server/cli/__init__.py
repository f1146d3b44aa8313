"""The `fedmsr` command line: one module per command group (`run`, `eval`, `monitor`,
`runs`, `db`, `fleet`, `pki`, `superlink`, `device`, `footage`, `budget`, `leakage`,
`encoder`, `privatize`, `shuffler`, `representations`).

Help is plain text on every screen (:mod:`fl_server.cli.help`), `-h` or `--help`; a bare
`fedmsr` (or a bare command group) prints its help and exits 0.

Errors are one line on stderr, `error: <option>: <what is wrong>`, with a non-zero exit:
2 for bad input (nothing was started or written), 1 for a run that failed, 3 for a run
that stopped cleanly because the devices' privacy budgets were exhausted (`fedmsr run`).
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import click
import typer

from fl_server.cli.budget import budget_app
from fl_server.cli.db import db_app
from fl_server.cli.device import device_app
from fl_server.cli.encoder import encoder_app
from fl_server.cli.errors import EXIT_BAD_INPUT
from fl_server.cli.eval import eval_command
from fl_server.cli.fleet import fleet_app
from fl_server.cli.footage import footage_app
from fl_server.cli.help import use_plain_help
from fl_server.cli.leakage import leakage_app
from fl_server.cli.monitor import monitor
from fl_server.cli.pki import pki_app
from fl_server.cli.privatize import privatize_command
from fl_server.cli.representations import representations_app
from fl_server.cli.run import run
from fl_server.cli.run_options import RunCommand
from fl_server.cli.runs import runs_app
from fl_server.cli.shuffler import shuffler_app
from fl_server.cli.superlink import superlink_app
from fl_server.config import ConfigError
from fl_server.registry.db import RegistryError, use_flag_url

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="fedmsr: federated privatization encoders.",
                  context_settings={"help_option_names": ["-h", "--help"]})


def package_version() -> str:
    """The installed fedmsr's version ("unknown" when run from a source tree not installed)."""
    try:
        return version("fedmsr")
    except PackageNotFoundError:
        return "unknown"


def _print_version(given: bool) -> None:
    if given:
        print(f"fedmsr {package_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    db: Annotated[str | None, typer.Option(
        "--db", help="Registry database URL (else $FEDMSR_DB, else sqlite:///fedmsr.db).")] = None,
    _version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print fedmsr's version and exit.")] = False,
) -> None:
    """fedmsr: federated training of Minimal Sufficient Representations for life-log video."""
    if db:  # kept in the environment: subcommands and the engine subprocess read it there
        use_flag_url(db)


app.add_typer(runs_app, name="runs")
app.add_typer(db_app, name="db")
app.add_typer(fleet_app, name="fleet")
app.add_typer(pki_app, name="pki")
app.add_typer(superlink_app, name="superlink")
app.add_typer(device_app, name="device")
app.add_typer(footage_app, name="footage")
app.add_typer(encoder_app, name="encoder")
app.add_typer(budget_app, name="budget")
app.add_typer(leakage_app, name="leakage")
app.add_typer(shuffler_app, name="shuffler")
app.add_typer(representations_app, name="representations")
app.command("run", cls=RunCommand)(run)
app.command("monitor")(monitor)
app.command("eval")(eval_command)
app.command("privatize")(privatize_command)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: map every expected error to one line and an exit code."""
    command = use_plain_help(typer.main.get_command(app))
    try:
        result = command.main(args=argv, prog_name="fedmsr", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:  # bare `fedmsr` / group: help, not error
        print(exc.ctx.get_help())
        return 0
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
