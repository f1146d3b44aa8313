"""`fedmsr shuffler keygen` / `fedmsr shuffler start`: the shuffler of unlinkable collection
(docs/representations.md, "Unlinkable collection"), a party of its own with its own key."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from fl_server.cli.errors import fail
from fl_server.shuffler_service import (
    FileJournal,
    journal_path,
    make_server,
    read_key,
    require_loopback,
    write_key,
)
from privacy.shuffle.shuffler import Shuffler

shuffler_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                           help="The shuffler of unlinkable representation collection.")


@shuffler_app.command("keygen")
def shuffler_keygen(
    out: Annotated[Path, typer.Option("--out", help="Where the private key goes (0600).")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
) -> None:
    """Create the shuffler's X25519 key pair; prints the public key."""
    if out.exists() and not force:
        fail("--out", f"{out} exists (a new key would orphan every blob sealed to the old "
                      f"one); pass --force to replace it")
    if out.is_dir():
        fail("--out", f"{out} is a directory")
    public = write_key(out, force=force)
    print(f"shuffler key {out}, public key {public.hex()}")


@shuffler_app.command("start")
def shuffler_start(
    key: Annotated[Path, typer.Option("--key", help="The key of `fedmsr shuffler keygen`.")],
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free port).")],
    min_crowd: Annotated[int, typer.Option(
        "--min-crowd", help="Release a collection only with at least this many senders.")],
    host: Annotated[str, typer.Option("--host", help="Loopback address to bind.")]
    = "127.0.0.1",
) -> None:
    """Serve the shuffler until SIGTERM or Ctrl-C.

    Prints its URL and public key.

    What it released and accepted is kept in <key>.journal, next to the key, and read back
    on start: a restarted shuffler releases no collection twice and takes no blob twice."""
    if not 0 <= port <= 65535:
        fail("--port", f"must be 0..65535, got {port}")
    if min_crowd < 2:
        fail("--min-crowd", f"must be >= 2 (a crowd of one links every record to its "
                            f"sender), got {min_crowd}")
    try:
        require_loopback(host)
    except ValueError as exc:
        fail("--host", str(exc))
    try:
        private = read_key(key)
    except ValueError as exc:
        fail("--key", str(exc))
    journal = FileJournal(journal_path(key))
    try:
        closed, seen = journal.load()
    except ValueError as exc:
        fail("--key", f"journal: {exc}")
    shuffler = Shuffler(private, min_crowd, journal=journal, closed=closed, seen=seen)
    try:
        server = make_server(shuffler, host, port)
    except OSError as exc:
        fail("--port", f"cannot bind {host}:{port}: {exc.strerror}")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="shuffler", daemon=True)
    thread.start()
    print(f"shuffler listening on http://{host}:{server.server_address[1]} min-crowd {min_crowd} "
          f"public key {shuffler.public_key.hex()}", flush=True)
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
    print("shuffler stopped", file=sys.stderr)
