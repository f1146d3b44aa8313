"""Deployment on Flower's SuperLink: start it, keep its key list in step with the registry,
start a device's SuperNode from its bundle.

* `fedmsr superlink start` runs `flower-superlink` with TLS (the PKI of `fedmsr pki init`),
  `--enable-supernode-auth`, a SQLite state file, runtime dependency installation
  disabled, bound to 127.0.0.1 unless told otherwise. It also writes the operator's Flower
  CLI configuration (a `[superlink.fedmsr]` section in `$FLWR_HOME/config.toml`) so that
  `flwr` and `fedmsr fleet sync` reach it over TLS.
* `fedmsr fleet sync` registers the public key of every enrolled device with it and
  unregisters revoked ones, over the Control API in process (`fl_server.control_api`: the
  `flwr` CLI's client and TLS settings, one connection, a few requests in flight), not one
  `flwr supernode register` process per key. Flower refuses a SuperNode whose key is not
  registered, cuts off a running one whose key is unregistered, and never accepts an
  unregistered key again, which is what makes revocation permanent.
* `fedmsr device start BUNDLE_DIR` runs Flower's SuperNode with the bundle's key and CA
  certificate, its own `FLWR_HOME` (inside the bundle, never inside the app directory) and
  port, and `--node-config` carrying its device id and data index; its ClientApps start
  from a warm SuperExec (`fl_client.warm_clientapp`) and it pulls faster while a run
  talks to it (`fl_client.supernode_polling`); `--stock` runs Flower's as it ships.

Flower's Control API has no authentication in the open-source release: whoever reaches the
SuperLink's port can start runs and (un)register keys, so it binds loopback by default, and
`--front HOST:PORT` writes the nginx deployment front (`fl_server/front.py`) that admits the
Control API only with the operator's client certificate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module
from flwr.supercore.control import ControlHttpClient
from sqlalchemy import select, update

from fl_server import control_api
from fl_server.enrollment import CA_FILE, INFO_FILE, KEY_FILE, MAX_DEVICE_INDEX
from fl_server.pki import Pki
from fl_server.registry import audit
from fl_server.registry.db import RegistryError, session_scope
from fl_server.registry.models import Device, DeviceStatus, utcnow
from privacy.checks import is_int

FEDERATION = control_api.CONNECTION
DEFAULT_PORT = 9092
#: Registrations committed per registry transaction, and sent to the SuperLink at once.
SYNC_CHUNK = 500
SYNC_WORKERS = 4
UNREGISTERED = "unregistered"


def bin_dir() -> Path:
    """Flower's console scripts live next to this interpreter (the SuperLink spawns some)."""
    return Path(sys.executable).parent


def tool(name: str) -> str:
    local = bin_dir() / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise RegistryError(name, f"Flower's `{name}` is not installed next to {sys.executable}")
    return found


def tool_env(flwr_home: Path) -> dict[str, str]:
    return {**os.environ, "FLWR_HOME": str(flwr_home),
            "PATH": f"{bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}"}


def operator_flwr_home() -> Path:
    """The operator's Flower CLI home: `$FLWR_HOME`, else `~/.flwr-fedmsr`."""
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr-fedmsr")


# -- the SuperLink -------------------------------------------------------------------------


@dataclass(frozen=True)
class SuperLinkPlan:
    pki: Pki
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    state: Path = Path("superlink/state.db")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [tool("flower-superlink"),
                "--ssl-ca-certfile", str(self.pki.ca_cert.resolve()),
                "--ssl-certfile", str(self.pki.server_cert.resolve()),
                "--ssl-keyfile", str(self.pki.server_key.resolve()),
                "--enable-supernode-auth", "--disable-runtime-dependency-installation",
                "--database", str(self.state.resolve()),
                "--host", self.host, "--port", str(self.port)]


def write_flwr_config(flwr_home: Path, address: str, ca_cert: Path,
                      client: control_api.ClientCertificate | None = None) -> Path:
    """Add (or replace) the `[superlink.fedmsr]` section, leaving other sections alone.

    With `client`, the section also names the operator's certificate, which fedmsr's
    Control API client presents to the deployment front (Flower ignores those keys).
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    section = (f'[superlink.{FEDERATION}]\naddress = "{address}"\n'
               f'root-certificates = "{ca_cert.resolve()}"\n')
    if client is not None:
        section += (f'{control_api.CLIENT_CERT_KEY} = "{client.cert.resolve()}"\n'
                    f'{control_api.CLIENT_KEY_KEY} = "{client.key.resolve()}"\n')
    text = path.read_text() if path.exists() else f'[superlink]\ndefault = "{FEDERATION}"\n'
    pattern = re.compile(rf"^\[superlink\.{FEDERATION}\]\n(?:(?!\[).*\n?)*", re.MULTILINE)
    text = pattern.sub(section, text) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    return path


def exec_superlink(plan: SuperLinkPlan, flwr_home: Path) -> None:
    """Replace this process by the SuperLink (its PID is the one the operator started)."""
    plan.pki.require()
    plan.state.parent.mkdir(parents=True, exist_ok=True)
    write_flwr_config(flwr_home, plan.address, plan.pki.ca_cert)
    command = plan.command()
    sys.stdout.flush()
    os.execve(command[0], command, tool_env(flwr_home))


# -- registering keys ----------------------------------------------------------------------


def register_key(public_key: str, flwr_home: Path) -> str:
    """Register one OpenSSH public key with the SuperLink; return Flower's node id."""
    with control_api.control_client(flwr_home) as client:
        return str(control_api.register(client, public_key))


def unregister_node(node_id: str, flwr_home: Path) -> None:
    with control_api.control_client(flwr_home) as client:
        control_api.unregister(client, int(node_id))


def online_nodes(flwr_home: Path) -> dict[str, str]:
    """Node id -> status (`registered`, `online`, `offline`, `unregistered`) at the SuperLink."""
    with control_api.control_client(flwr_home) as client:
        return {str(n.node_id): str(n.status) for n in control_api.list_nodes(client)}


@dataclass
class SyncResult:
    registered: list[str] = field(default_factory=list)
    unregistered: list[str] = field(default_factory=list)
    #: Enrolled devices whose key the SuperLink had already unregistered: re-enroll them.
    burnt: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Pending:
    device_id: int
    name: str
    revoked: bool
    public_key: str
    node_id: str | None


def sync(url: str, flwr_home: Path, chunk: int = SYNC_CHUNK,
         workers: int = SYNC_WORKERS) -> SyncResult:
    """Register enrolled devices' keys, unregister revoked ones, over one Control API client.

    The SuperLink's node list is read once, so a key it already holds (a sync interrupted
    between registering and committing) is adopted, not registered twice (Flower would
    refuse it). Revocations go first, each committed alone; registrations run `workers`
    at a time and are committed `chunk` devices per transaction, so an interruption costs
    at most one chunk of commits, which the next sync adopts from the node list.
    """
    with session_scope(url) as session:
        todo = [_Pending(d.id, d.name, d.status == DeviceStatus.REVOKED.value, d.public_key,
                         d.superlink_node_id)
                for d in session.scalars(select(Device).where(
                    Device.superlink_unregistered_at.is_(None)).order_by(Device.id))]
    result = SyncResult()
    with control_api.control_client(flwr_home) as client:
        known = {bytes(n.public_key): n for n in control_api.list_nodes(client)}
        for device in (d for d in todo if d.revoked):
            if _cut_off(url, client, device, known):
                result.unregistered.append(device.name)
        enrolled = [d for d in todo if not d.revoked and d.node_id is None]
        for start in range(0, len(enrolled), chunk):
            _register_chunk(url, client, enrolled[start:start + chunk], known, workers, result)
    return result


def _cut_off(url: str, client: ControlHttpClient, device: _Pending,
             known: dict[bytes, NodeInfo]) -> bool:
    """Unregister a revoked device's key if the SuperLink holds it (found by key too)."""
    node = known.get(control_api.pem_public_key(device.public_key))
    node_id = device.node_id or (str(node.node_id) if node is not None else None)
    if node_id is None:
        return False
    if node is None or node.status != UNREGISTERED:
        control_api.unregister(client, int(node_id))
    _record(url, device.device_id, "device.unregister", {"node_id": node_id},
            superlink_node_id=node_id, superlink_unregistered_at=utcnow())
    return True


def _register_chunk(url: str, client: ControlHttpClient, devices: list[_Pending],
                    known: dict[bytes, NodeInfo], workers: int, result: SyncResult) -> None:
    """Register (or adopt) one chunk of keys, then record them in one transaction."""
    def node_for(device: _Pending) -> tuple[str | None, bool]:
        node = known.get(control_api.pem_public_key(device.public_key))
        if node is None:
            return str(control_api.register(client, device.public_key, device.name)), False
        return (None, True) if node.status == UNREGISTERED else (str(node.node_id), True)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        outcomes = list(pool.map(node_for, devices))
    now = utcnow()
    done = [(device, node_id, adopted) for device, (node_id, adopted)
            in zip(devices, outcomes, strict=True) if node_id is not None]
    result.burnt.extend(d.name for d, (node_id, _) in zip(devices, outcomes, strict=True)
                        if node_id is None)
    if not done:
        return
    with session_scope(url) as session:  # one executemany UPDATE, one batch of audit rows
        session.execute(update(Device), [
            {"id": d.device_id, "superlink_node_id": node_id, "superlink_registered_at": now}
            for d, node_id, _ in done])
        audit.record_many(session, "device.register", [
            (d.device_id, {"node_id": node_id, "adopted": adopted}) for d, node_id, adopted in done])
    result.registered.extend(d.name for d, _, _ in done)


def unregister_device(url: str, device_id: int, flwr_home: Path) -> bool:
    """Unregister a revoked device's key at the SuperLink (no-op when it never was)."""
    with session_scope(url) as session:
        device = session.get(Device, device_id)
        node_id = None if device is None or device.superlink_unregistered_at else \
            device.superlink_node_id
    if node_id is None:
        return False
    unregister_node(node_id, flwr_home)
    _record(url, device_id, "device.unregister", {"node_id": node_id},
            superlink_unregistered_at=utcnow())
    return True


def _record(url: str, device_id: int, action: str, detail: dict[str, Any],
            **changes: Any) -> None:
    with session_scope(url) as session:
        device = session.get(Device, device_id)
        assert device is not None
        for key, value in changes.items():
            setattr(device, key, value)
        audit.record(session, action, detail, device_id=device_id)


# -- a device's SuperNode ------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    root: Path
    info: dict[str, Any]

    @classmethod
    def load(cls, root: Path) -> Bundle:
        try:
            info = json.loads((root / INFO_FILE).read_text())
        except FileNotFoundError:
            raise RegistryError("BUNDLE_DIR", f"{root} is not a device bundle (no "
                                f"{INFO_FILE}); `fedmsr fleet enroll` writes bundles") from None
        except json.JSONDecodeError as exc:
            raise RegistryError("BUNDLE_DIR", f"{root / INFO_FILE} is not valid JSON "
                                f"({exc.msg})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryError("BUNDLE_DIR", f"cannot read {root / INFO_FILE}: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None
        problem = bundle_info_problem(info)
        if problem:
            raise RegistryError("BUNDLE_DIR", f"{root / INFO_FILE}: {problem}")
        for needed in (KEY_FILE, CA_FILE):
            if not (root / needed).exists():
                fix = ("run `fedmsr pki init` before enrolling, or copy the CA certificate "
                       "in" if needed == CA_FILE else "the bundle is incomplete")
                raise RegistryError("BUNDLE_DIR", f"{root} has no {needed}: {fix}")
        return cls(root, info)

    def footage(self, override: Path | None = None) -> Path | None:
        """The device's own footage folder: `override` (`fedmsr device start --footage`),
        else the bundle's ``footage`` entry (relative to the bundle), else None (the node
        then plays its place in a synthetic fleet)."""
        recorded = self.info.get("footage")
        folder = override if override is not None else (
            self.root / recorded if isinstance(recorded, str) and recorded else None)
        if folder is None:
            return None
        folder = folder.expanduser().resolve()
        if not folder.is_dir():
            raise RegistryError("--footage", f"{folder} is not a folder (of video files or "
                                "folders of frame images)")
        if any(c in str(folder) for c in '"\n\r\0'):
            raise RegistryError("--footage", f"{str(folder)!r}: a footage path cannot hold "
                                "quotes or newlines")
        return folder

    def node_config(self, footage: Path | None = None) -> str:
        """Data index, device id and enrollment key path (the ClientApp signs check-ins),
        the registry identities SecAgg+ verifies neighbours against, when the bundle
        holds them (`fedmsr fleet identities --out BUNDLE/identities.json`), and the
        device's own footage folder when it has one."""
        config = (f"device-index={int(self.info['device_index'])} "
                  f"device-id={int(self.info['device_id'])} "
                  f'device-key="{(self.root / KEY_FILE).resolve()}"')
        if footage is not None:
            config += f' footage="{footage}"'
        identities = self.root / IDENTITIES_FILE
        if identities.is_file():
            config += f' identities-file="{identities.resolve()}"'
        return config


def bundle_info_problem(info: object) -> str:
    """What is wrong with a bundle's device.json ("" when nothing): the fields a SuperNode
    is started from, each of the type and range enrollment writes."""
    if not isinstance(info, dict):
        return "must hold a JSON object"
    for key in ("device_id", "device_index"):
        value = info.get(key)
        if not is_int(value) or not 0 <= value <= MAX_DEVICE_INDEX:
            return f"{key} must be an integer between 0 and {MAX_DEVICE_INDEX}, got {value!r}"
    for key in ("name", "superlink"):
        value = info.get(key)
        if not isinstance(value, str) or not value or any(c in value for c in '"\n\r\0'):
            return f"{key} must be a non-empty string without quotes or newlines, got {value!r}"
    return ""


#: Where a bundle keeps the registry identities for secure aggregation (optional).
IDENTITIES_FILE = "identities.json"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def supernode_command(bundle: Bundle, port: int, superlink: str | None = None,
                      footage: Path | None = None, stock: bool = False) -> list[str]:
    """The device's SuperNode: Flower's `flower-supernode` as it ships (`stock`), or the
    same SuperNode with a shorter pull interval while a run talks to it
    (`fl_client.supernode_polling`) whose ClientApps a warm SuperExec starts
    (`fl_client.warm_clientapp`, so `--isolation process`)."""
    root = bundle.root.resolve()
    head = [tool("flower-supernode")] if stock else [
        sys.executable, "-m", "fl_client.supernode_polling", "--isolation", "process"]
    return [*head,
            "--superlink", superlink or str(bundle.info["superlink"]),
            "--root-certificates", str(root / CA_FILE),
            "--auth-supernode-private-key", str(root / KEY_FILE),
            "--node-config", bundle.node_config(bundle.footage(footage)),
            "--host", "127.0.0.1", "--port", str(port)]


def warm_executor_command(port: int, supernode_pid: int) -> list[str]:
    """The SuperExec that forks each ClientApp from a warm process, on the SuperNode's
    Runtime API (`--host`/`--port` above) and watching the SuperNode's PID."""
    return [sys.executable, "-m", "fl_client.warm_clientapp",
            "--runtime-api-address", f"127.0.0.1:{port}", "--parent-pid", str(supernode_pid)]


def exec_supernode(bundle: Bundle, port: int | None, superlink: str | None = None,
                   footage: Path | None = None, stock: bool = False) -> None:
    """Replace this process by the device's SuperNode, FLWR_HOME inside the bundle.

    Unless `stock`, a child of it runs the warm SuperExec: the SuperNode (this PID) is its
    parent, as with Flower's own SuperExec, and it exits when the SuperNode does."""
    port = port or free_port()
    command = supernode_command(bundle, port, superlink, footage, stock)
    flwr_home = bundle.root.resolve() / ".flwr"
    flwr_home.mkdir(exist_ok=True)
    env = tool_env(flwr_home)
    sys.stdout.flush()
    sys.stderr.flush()
    if not stock:
        executor = warm_executor_command(port, os.getpid())
        if os.fork() == 0:
            try:
                os.execve(executor[0], executor, env)
            finally:
                os._exit(127)  # exec failed: the SuperNode still runs, without ClientApps
    os.execve(command[0], command, env)
