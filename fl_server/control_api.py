"""The SuperLink's Control API, called in process with the `flwr` CLI's own client.

Running the `flwr` CLI once per call costs a Python start-up and a TLS handshake each time
(about 1-2 s on these machines): fine for one command, hopeless for registering a fleet of
thousands of keys. Here one client is built the way the CLI builds it
(`flwr.cli.utils.init_http_client_from_connection`: TLS with the root certificate of the
`[superlink.fedmsr]` connection in `$FLWR_HOME/config.toml`, the CLI's version and
account-auth interceptors) and reused for every call over one kept-alive connection.

Flower's own errors (a refused key, an unknown node, an unreachable SuperLink) become one
:class:`RegistryError` line each, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import click
from cryptography.hazmat.primitives import serialization
from flwr.cli.flower_config import read_superlink_connection
from flwr.cli.typing import SuperLinkConnection
from flwr.cli.utils import flwr_cli_exc_handler, init_http_client_from_connection
from flwr.proto.control_pb2 import (  # pylint: disable=no-name-in-module
    ListNodesRequest,
    RegisterNodeRequest,
    UnregisterNodeRequest,
)
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module
from flwr.supercore.control import ControlHttpClient

from fl_server.registry.db import RegistryError

#: The name of the operator's connection in `$FLWR_HOME/config.toml`.
CONNECTION = "fedmsr"
T = TypeVar("T")


@contextlib.contextmanager
def flwr_home_env(flwr_home: Path) -> Iterator[None]:
    """Flower's CLI helpers read `FLWR_HOME` from the environment: set it for a moment."""
    saved = os.environ.get("FLWR_HOME")
    os.environ["FLWR_HOME"] = str(flwr_home)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("FLWR_HOME", None)
        else:
            os.environ["FLWR_HOME"] = saved


def connection(flwr_home: Path, address: str | None = None) -> SuperLinkConnection:
    """The operator's `[superlink.fedmsr]` connection, optionally at another address.

    Checked here first: Flower's reader would write a default config file where none is.
    """
    path = flwr_home / "config.toml"
    try:
        known = tomllib.loads(path.read_text()).get("superlink", {})
    except (OSError, tomllib.TOMLDecodeError):
        known = {}
    if CONNECTION not in known:
        raise RegistryError("superlink", f"no [superlink.{CONNECTION}] connection in {path}; "
                            "`fedmsr superlink start` writes it (set FLWR_HOME to the "
                            "SuperLink operator's Flower home)")
    with flwr_home_env(flwr_home), contextlib.redirect_stdout(io.StringIO()):
        try:
            conn = read_superlink_connection(CONNECTION)
        except click.ClickException as exc:
            raise RegistryError("superlink", f"{path}: {exc.format_message()}") from None
    if address is None:
        return conn
    return SuperLinkConnection(name=conn.name, address=address,
                               root_certificates=conn.root_certificates,
                               insecure=conn.insecure, federation=conn.federation)


@contextlib.contextmanager
def control_client(flwr_home: Path, address: str | None = None) -> Iterator[ControlHttpClient]:
    """One Control API client for a batch of calls, closed afterwards."""
    conn = connection(flwr_home, address)
    with flwr_home_env(flwr_home), contextlib.redirect_stdout(io.StringIO()):
        try:  # quiet: the CLI helper prints which SuperLink it uses
            client = init_http_client_from_connection(conn)
        except click.ClickException as exc:
            raise RegistryError("superlink", exc.format_message()) from None
    try:
        yield client
    finally:
        client.close()


def call(what: str, request: Callable[[], T]) -> T:
    """Run one Control API request; a Flower or transport error becomes a RegistryError."""
    try:
        with flwr_cli_exc_handler():
            return request()
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        raise RegistryError("superlink", f"{what} failed: {message}") from None


def pem_public_key(openssh: str) -> bytes:
    """The registry keeps OpenSSH keys; the Control API takes PEM SubjectPublicKeyInfo."""
    key = serialization.load_ssh_public_key(openssh.encode())
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def register(client: ControlHttpClient, public_key: str, name: str | None = None) -> int:
    """Register one OpenSSH public key; return Flower's node id."""
    request = RegisterNodeRequest(public_key=pem_public_key(public_key), name=name)
    response = call("registering the key", lambda: client.RegisterNode(request))
    if not response.node_id:
        raise RegistryError("superlink", "registering the key was refused (no node id)")
    return int(response.node_id)


def unregister(client: ControlHttpClient, node_id: int) -> None:
    call(f"unregistering node {node_id}",
         lambda: client.UnregisterNode(UnregisterNodeRequest(node_id=node_id)))


def list_nodes(client: ControlHttpClient) -> list[NodeInfo]:
    """Every node the SuperLink knows, unregistered ones included."""
    return list(call("listing SuperNodes",
                     lambda: client.ListNodes(ListNodesRequest())).nodes_info)
