"""`fedmsr pki init`: the CA and the SuperLink's TLS certificate; `fedmsr pki operator`: the
operator's client certificate for the deployment front (docs/deployment.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fl_server import pki

console = Console(soft_wrap=True)  # no wrapping: output is read by scripts too
pki_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                      help="The CA, the SuperLink's TLS certificate, the operator's "
                           "client certificate.",
                      short_help="The CA and the SuperLink's and operator's certificates.")


@pki_app.command("init")
def pki_init(
    pki_dir: Annotated[Path, typer.Option(help="Where the CA and certificates go.")]
    = pki.DEFAULT_DIR,
    host: Annotated[list[str] | None, typer.Option(
        help="Address the SuperLink is reached at (repeatable).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing PKI.")] = False,
) -> None:
    """Create a CA and the SuperLink's TLS certificate (ECDSA P-384)."""
    created = pki.init_pki(pki_dir, host or ["127.0.0.1", "localhost"], force=force)
    console.print(f"CA {created.ca_cert}, SuperLink certificate {created.server_cert}",
                  highlight=False)


@pki_app.command("operator")
def pki_operator(
    pki_dir: Annotated[Path, typer.Option(help="PKI of `fedmsr pki init` (with ca.key).")]
    = pki.DEFAULT_DIR,
    name: Annotated[str, typer.Option(help="The operator's name (certificate CN).")]
    = "operator",
    days: Annotated[int, typer.Option(min=1, max=825, help="Validity in days.")] = 90,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing one.")] = False,
) -> None:
    """Issue the operator's client certificate.

    The deployment front admits Control API
    calls (fleet sync, runs, key registration) only with it."""
    issued = pki.issue_operator(pki_dir, name, days, force=force)
    console.print(f"operator certificate {issued.operator_cert}, key {issued.operator_key}",
                  highlight=False)
