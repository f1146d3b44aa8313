"""`fedmsr superlink start`: Flower's SuperLink for the fleet, with TLS and SuperNode
authentication, optionally behind the nginx deployment front; `fedmsr superlink connect`:
an operator's connection through that front (docs/deployment.md)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fl_server import control_api, deployment, front, pki

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
    front_address: Annotated[str | None, typer.Option(
        "--front", metavar="HOST:PORT",
        help="Also write the nginx deployment front listening on HOST:PORT (STATE_DIR/front/"
             "nginx.conf): Fleet API for devices, Control API only with the operator "
             "certificate of `fedmsr pki operator`. The SuperLink must then bind loopback; "
             "run the printed nginx command next to it.")] = None,
) -> None:
    """Run flower-superlink (TLS, SuperNode auth) in the foreground."""
    plan = deployment.SuperLinkPlan(pki.Pki(pki_dir).require(), host, port, state)
    if front_address is not None:
        front_host, front_port = front.parse_address(front_address, "--front")
        front.require_loopback(host, "--host")
        if (front_host, front_port) == (host, port):
            raise front.FrontError("--front", "the front needs a port of its own")
        conf = front.write(front.FrontPlan(plan.pki, front_host, front_port, port, host),
                           state.parent / front.FRONT_DIR)
        run = shlex.join(front.command(conf, front.nginx() or "nginx"))
        console.print(f"front on {front_host}:{front_port}: {conf}; run it with\n  {run}\n"
                      f"devices enroll with --superlink {front_host}:{front_port}",
                      highlight=False)
    console.print(f"SuperLink on {plan.address} (TLS, SuperNode auth, state {state}); "
                  f"Flower CLI config in {deployment.operator_flwr_home()}", highlight=False)
    deployment.exec_superlink(plan, deployment.operator_flwr_home())


@superlink_app.command("connect")
def superlink_connect(
    address: Annotated[str, typer.Argument(metavar="HOST:PORT",
                                           help="The deployment front's address.")],
    pki_dir: Annotated[Path, typer.Option(
        help="Where ca.pem, operator.pem and operator.key are (`fedmsr pki operator`).")]
    = pki.DEFAULT_DIR,
) -> None:
    """Point the operator's connection at the deployment front.

    Writes `$FLWR_HOME/config.toml` for the front, with the
    operator certificate: `fedmsr fleet sync`, `fleet revoke` and `run --superlink` present
    it (Flower's own `flwr` CLI cannot, and gets 403 there)."""
    front.parse_address(address, "HOST:PORT")
    keys = pki.Pki(pki_dir)
    missing = [p.name for p in (keys.ca_cert, keys.operator_cert, keys.operator_key)
               if not p.exists()]
    if missing:
        raise front.FrontError("--pki-dir", f"{pki_dir} has no {', '.join(missing)}; "
                               "`fedmsr pki operator` issues the operator certificate")
    path = deployment.write_flwr_config(
        deployment.operator_flwr_home(), address, keys.ca_cert,
        control_api.ClientCertificate(keys.operator_cert, keys.operator_key))
    console.print(f"connection [superlink.{control_api.CONNECTION}] -> {address} with "
                  f"{keys.operator_cert} in {path}", highlight=False, markup=False)
