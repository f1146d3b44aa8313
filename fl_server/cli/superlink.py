"""`fedmsr superlink start`: Flower's SuperLink for the fleet, with TLS and SuperNode
authentication (docs/deployment.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fl_server import deployment, pki

console = Console(soft_wrap=True)  # no wrapping: output is read by scripts too
superlink_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                            help="Run Flower's SuperLink for the fleet.")


@superlink_app.command("start")
def superlink_start(
    pki_dir: Annotated[Path, typer.Option(help="PKI of `fedmsr pki init`.")] = pki.DEFAULT_DIR,
    host: Annotated[str, typer.Option(help="Bind address (loopback by default: Flower's "
                                           "Control API has no authentication).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the Fleet/Control/Runtime APIs.")]
    = deployment.DEFAULT_PORT,
    state: Annotated[Path, typer.Option(help="SuperLink state (SQLite).")]
    = Path("superlink/state.db"),
) -> None:
    """Run flower-superlink (TLS, SuperNode authentication) in the foreground."""
    plan = deployment.SuperLinkPlan(pki.Pki(pki_dir).require(), host, port, state)
    console.print(f"SuperLink on {plan.address} (TLS, SuperNode auth, state {state}); "
                  f"Flower CLI config in {deployment.operator_flwr_home()}", highlight=False)
    deployment.exec_superlink(plan, deployment.operator_flwr_home())
