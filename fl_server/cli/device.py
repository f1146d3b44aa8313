"""`fedmsr device start`: a device's SuperNode, run from its enrollment bundle
(docs/deployment.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fl_server import deployment

console = Console(soft_wrap=True)  # no wrapping: output is read by scripts too
device_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                         help="Run a device's SuperNode from its bundle.")


@device_app.command("start")
def device_start(
    bundle_dir: Annotated[Path, typer.Argument(metavar="BUNDLE_DIR", help="Device bundle.")],
    port: Annotated[int | None, typer.Option(help="SuperNode's own port (default: free).")]
    = None,
    superlink: Annotated[str | None, typer.Option(
        help="Override the bundle's SuperLink address.")] = None,
    footage: Annotated[Path | None, typer.Option(
        help="The device's own footage: a folder of video files or frame-image folders "
        "(default: the bundle's `footage` entry; none: the synthetic fleet).")] = None,
    stock: Annotated[bool, typer.Option(
        "--stock", help="Flower's SuperNode as it ships: a cold ClientApp process per "
        "message and Flower's poll intervals (default: a warm SuperExec forks each "
        "ClientApp, and the SuperNode pulls faster while a run talks to it).")] = False,
) -> None:
    """Run a device's SuperNode from its bundle.

    With the device's key, the CA, its own FLWR_HOME and port.
    """
    bundle = deployment.Bundle.load(bundle_dir)
    console.print(f"device {bundle.info['device_id']} ({bundle.info['name']}) -> "
                  f"{superlink or bundle.info['superlink']}", highlight=False)
    folder = bundle.footage(footage)
    if folder is not None:
        console.print(f"footage: {folder}", highlight=False)
    deployment.exec_supernode(bundle, port, superlink, folder, stock)
