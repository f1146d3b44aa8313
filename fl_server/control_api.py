"""The SuperLink's Control API, called in process with the `flwr` CLI's own client.

Running the `flwr` CLI once per call costs a Python start-up and a TLS handshake each time
(about 1-2 s on these machines): fine for one command, hopeless for registering a fleet of
thousands of keys. Here one client is built the way the CLI builds it
(`flwr.cli.utils.init_http_client_from_connection`: TLS with the root certificate of the
`[superlink.fedmsr]` connection in `$FLWR_HOME/config.toml`, the CLI's version and
account-auth interceptors) and reused for every call over one kept-alive connection.

Behind the deployment front (`fl_server/front.py`) the Control API answers only a client
that presents the operator's certificate (`fedmsr pki operator`). Flower's CLI cannot
present one, so a connection that names one (`fedmsr superlink connect`, which adds
`fedmsr-client-certificate` and `fedmsr-client-key` to `[superlink.fedmsr]`; Flower
ignores keys it does not know) gets a client built here: the same Control API client class
and the CLI's client and version interceptors, with TLS that verifies the connection's CA
and presents that certificate. Flower's account-authentication interceptor is left out:
the open-source SuperLink has no accounts, the front's certificate check takes their place.

Flower's own errors (a refused key, an unknown node, an unreachable SuperLink, the front's
403) become one :class:`RegistryError` line each, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import ssl
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import click
from cryptography.hazmat.primitives import serialization
from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
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
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

from fl_server.registry.db import RegistryError

#: The name of the operator's connection in `$FLWR_HOME/config.toml`.
CONNECTION = "fedmsr"
#: fedmsr's own keys in that section: the operator's client certificate for the front.
CLIENT_CERT_KEY, CLIENT_KEY_KEY = "fedmsr-client-certificate", "fedmsr-client-key"
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


@dataclass(frozen=True)
class ClientCertificate:
    """The operator's certificate and key, presented to the front for the Control API."""

    cert: Path
    key: Path


def _section(flwr_home: Path) -> dict[str, object]:
    """The raw `[superlink.fedmsr]` table (checked here first: Flower's reader would write
    a default config file where none is)."""
    path = flwr_home / "config.toml"
    try:
        known = tomllib.loads(path.read_text()).get("superlink", {})
    except (OSError, tomllib.TOMLDecodeError):
        known = {}
    section = known.get(CONNECTION) if isinstance(known, dict) else None
    if not isinstance(section, dict):
        raise RegistryError("superlink", f"no [superlink.{CONNECTION}] connection in {path}; "
                            "`fedmsr superlink start` (on the SuperLink's host) or "
                            "`fedmsr superlink connect` writes it (set FLWR_HOME to the "
                            "operator's Flower home)")
    return section


def client_certificate(flwr_home: Path) -> ClientCertificate | None:
    """The operator certificate the connection names, if any (both keys or neither)."""
    section = _section(flwr_home)
    cert, key = section.get(CLIENT_CERT_KEY), section.get(CLIENT_KEY_KEY)
    if cert is None and key is None:
        return None
    if not isinstance(cert, str) or not isinstance(key, str):
        raise RegistryError("superlink", f"[superlink.{CONNECTION}] in {flwr_home / 'config.toml'}"
                            f" needs both {CLIENT_CERT_KEY} and {CLIENT_KEY_KEY} as paths")
    return ClientCertificate(Path(cert), Path(key))


def connection(flwr_home: Path, address: str | None = None) -> SuperLinkConnection:
    """The operator's `[superlink.fedmsr]` connection, optionally at another address."""
    path = flwr_home / "config.toml"
    _section(flwr_home)
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
    certificate = client_certificate(flwr_home)
    if certificate is not None:
        client = client_with_certificate(conn, certificate)
    else:
        with flwr_home_env(flwr_home), contextlib.redirect_stdout(io.StringIO()):
            try:  # quiet: the CLI helper prints which SuperLink it uses
                client = init_http_client_from_connection(conn)
            except click.ClickException as exc:
                raise RegistryError("superlink", exc.format_message()) from None
    try:
        yield client
    finally:
        client.close()


def client_with_certificate(conn: SuperLinkConnection,
                            certificate: ClientCertificate | None) -> ControlHttpClient:
    """A Control API client over TLS that verifies the connection's CA and, when given,
    presents the operator's certificate (no certificate: what an outsider sends)."""
    if conn.insecure or not conn.root_certificates:
        raise RegistryError("superlink", "a client certificate needs TLS: the connection "
                            "has no root-certificates")
    context = ssl.create_default_context(cafile=str(conn.root_certificates))
    if certificate is not None:
        try:
            context.load_cert_chain(str(certificate.cert), str(certificate.key))
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError("superlink", f"cannot load the client certificate "
                                f"{certificate.cert} with {certificate.key}: {exc}") from None
    return ControlHttpClient(f"https://{conn.address}", verify=context, interceptors=[
        CliClientHttpInterceptor(), RuntimeVersionHttpInterceptor(component_name="flwr CLI")])


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
