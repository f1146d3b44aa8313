"""Deployment on Flower's SuperLink: start it, keep its key list in step with the registry,
start a device's SuperNode from its bundle.

* `fedmsr superlink start` runs `flower-superlink` with TLS (the PKI of `fedmsr pki init`),
  `--enable-supernode-auth`, a SQLite state file, runtime dependency installation
  disabled, bound to 127.0.0.1 unless told otherwise. It also writes the operator's Flower
  CLI configuration (a `[superlink.fedmsr]` section in `$FLWR_HOME/config.toml`) so that
  `flwr` and `fedmsr fleet sync` reach it over TLS.
* `fedmsr fleet sync` registers the public key of every enrolled device with it
  (`flwr supernode register`) and unregisters revoked ones: Flower refuses a SuperNode
  whose key is not registered, cuts off a running one whose key is unregistered, and never
  accepts an unregistered key again, which is what makes revocation permanent.
* `fedmsr device start BUNDLE_DIR` runs `flower-supernode` with the bundle's key and CA
  certificate, its own `FLWR_HOME` (inside the bundle, never inside the app directory) and
  port, and `--node-config` carrying its device id and data index.

Flower's Control API has no authentication in the open-source release: whoever reaches the
SuperLink's port can start runs and (un)register keys, so it binds loopback by default.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from fl_server.enrollment import CA_FILE, INFO_FILE, KEY_FILE, operator
from fl_server.pki import Pki
from fl_server.registry.db import RegistryError, session_scope
from fl_server.registry.models import AuditEntry, Device, DeviceStatus, utcnow

FEDERATION = "fedmsr"
DEFAULT_PORT = 9092
FLWR_TIMEOUT_S = 120.0


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


def write_flwr_config(flwr_home: Path, address: str, ca_cert: Path) -> Path:
    """Add (or replace) the `[superlink.fedmsr]` section, leaving other sections alone."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    section = (f'[superlink.{FEDERATION}]\naddress = "{address}"\n'
               f'root-certificates = "{ca_cert.resolve()}"\n')
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


def flwr_json(args: list[str], flwr_home: Path) -> dict[str, Any]:
    """Run `flwr ARGS --format json`; return its JSON object or raise a one-line error."""
    try:
        done = subprocess.run([tool("flwr"), *args, "--format", "json"], capture_output=True,
                              text=True, timeout=FLWR_TIMEOUT_S, env=tool_env(flwr_home),
                              check=False)
    except subprocess.TimeoutExpired:
        raise RegistryError("superlink", f"`flwr {args[0]} {args[1]}` timed out") from None
    try:
        answer = json.loads(done.stdout)
    except json.JSONDecodeError:
        tail = (done.stderr or done.stdout).strip().splitlines()
        raise RegistryError("superlink", f"`flwr {' '.join(args[:2])}` failed: "
                            f"{tail[-1] if tail else 'no output'}") from None
    return answer


def _flwr_error(answer: dict[str, Any]) -> str:
    return " ".join(str(answer.get("error-message", "unknown error")).split())


def register_key(public_key: str, flwr_home: Path) -> str:
    """Register one OpenSSH public key with the SuperLink; return Flower's node id."""
    with tempfile.NamedTemporaryFile("w", suffix=".pub", delete=False) as handle:
        handle.write(public_key + "\n")
    try:
        answer = flwr_json(["supernode", "register", handle.name, FEDERATION], flwr_home)
    finally:
        os.unlink(handle.name)
    if not answer.get("success"):
        raise RegistryError("superlink", f"registering the key was refused: "
                            f"{_flwr_error(answer)}")
    return str(answer["node-id"])


def unregister_node(node_id: str, flwr_home: Path) -> None:
    answer = flwr_json(["supernode", "unregister", node_id, FEDERATION], flwr_home)
    if not answer.get("success"):
        raise RegistryError("superlink", f"unregistering node {node_id} was refused: "
                            f"{_flwr_error(answer)}")


def online_nodes(flwr_home: Path) -> dict[str, str]:
    """Node id -> status (`registered`, `online`, `offline`, `unregistered`) at the SuperLink."""
    answer = flwr_json(["supernode", "list", FEDERATION], flwr_home)
    if not answer.get("success"):
        raise RegistryError("superlink", f"listing SuperNodes failed: {_flwr_error(answer)}")
    return {str(n["node-id"]): str(n["status"]) for n in answer.get("nodes", [])}


@dataclass
class SyncResult:
    registered: list[str]
    unregistered: list[str]


def sync(url: str, flwr_home: Path) -> SyncResult:
    """Register enrolled devices' keys, unregister revoked ones; each step committed alone.

    A device is committed right after the SuperLink confirms it, so an interruption leaves
    the registry telling the truth and the next sync carries on where this one stopped.
    """
    with session_scope(url) as session:
        todo = [(d.id, d.name, d.status, d.public_key, d.superlink_node_id)
                for d in session.scalars(select(Device).where(
                    Device.superlink_unregistered_at.is_(None)).order_by(Device.id))]
    result = SyncResult([], [])
    for device_id, name, status, public_key, node_id in todo:
        revoked = status == DeviceStatus.REVOKED.value
        if revoked and node_id is not None:
            unregister_device(url, device_id, flwr_home)
            result.unregistered.append(name)
        elif not revoked and node_id is None:
            node = register_key(public_key, flwr_home)
            _record(url, device_id, "device.register", {"node_id": node},
                    superlink_node_id=node, superlink_registered_at=utcnow())
            result.registered.append(name)
    return result


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
        session.add(AuditEntry(actor=operator(), action=action, device_id=device_id,
                               detail=json.dumps(detail)))


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
        for needed in (KEY_FILE, CA_FILE):
            if not (root / needed).exists():
                fix = ("run `fedmsr pki init` before enrolling, or copy the CA certificate "
                       "in" if needed == CA_FILE else "the bundle is incomplete")
                raise RegistryError("BUNDLE_DIR", f"{root} has no {needed}: {fix}")
        return cls(root, info)

    def node_config(self) -> str:
        """Data index, device id and enrollment key path (the ClientApp signs check-ins)."""
        return (f"device-index={int(self.info['device_index'])} "
                f"device-id={int(self.info['device_id'])} "
                f'device-key="{(self.root / KEY_FILE).resolve()}"')


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def supernode_command(bundle: Bundle, port: int, superlink: str | None = None) -> list[str]:
    root = bundle.root.resolve()
    return [tool("flower-supernode"),
            "--superlink", superlink or str(bundle.info["superlink"]),
            "--root-certificates", str(root / CA_FILE),
            "--auth-supernode-private-key", str(root / KEY_FILE),
            "--node-config", bundle.node_config(),
            "--host", "127.0.0.1", "--port", str(port)]


def exec_supernode(bundle: Bundle, port: int | None, superlink: str | None = None) -> None:
    """Replace this process by the device's SuperNode, FLWR_HOME inside the bundle."""
    flwr_home = bundle.root.resolve() / ".flwr"
    flwr_home.mkdir(exist_ok=True)
    command = supernode_command(bundle, port or free_port(), superlink)
    sys.stdout.flush()
    os.execve(command[0], command, tool_env(flwr_home))
