"""The deployment front: an nginx configuration that puts the SuperLink behind a gate.

Why: Flower 1.42's SuperLink serves the Fleet API (devices), the Control API (whoever
operates it: start runs, register and unregister SuperNode keys, list nodes) and the
Runtime API (its own ServerApp) as protobuf over HTTPS on **one port**, and the
open-source Control API has no authentication. Whoever reaches that port can register a
key of their own, unregister (and so permanently burn) every device's key, or run code.

The front is Debian's nginx, configured by :func:`render`, listening where devices connect,
with the SuperLink bound to loopback behind it. It routes by URL path, which is how
Flower 1.42 names the service of a request (`/v1/fleet/…`, `/v1/control/…`,
`/v1/runtime/…`):

* `/v1/fleet/` passes to the SuperLink for anyone (a SuperNode still has to prove its
  registered key to the SuperLink itself, which signs every request);
* `/v1/control/` passes only when the TLS client presented a certificate that chains to the
  fleet CA **and** carries `OU=operator` (issued by `fedmsr pki operator`); anything else
  gets 403 from nginx and never reaches the SuperLink;
* everything else, the Runtime API included (the SuperLink's own ServerApp talks to it on
  loopback), gets 404.

The front terminates TLS with the SuperLink's certificate (devices already trust the CA
in their bundles) and talks to the SuperLink over TLS again, verifying it against the same
CA under one of the certificate's DNS names (nginx does not match IP addresses).

Nothing here starts nginx: `fedmsr superlink start --front` writes the file and prints the
command; the operator runs it under their supervisor (`nginx -c CONF -p DIR -g 'daemon
off;'`). Paths nginx writes (pid, logs, temporary files) are relative to that directory,
so it needs no root and leaves Debian's own nginx alone.
"""

from __future__ import annotations

import ipaddress
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from fl_server import pki as pki_module
from fl_server.registry.db import RegistryError

#: Where `fedmsr superlink start --front` writes the front, next to the SuperLink's state.
FRONT_DIR = "front"
CONF_FILE = "nginx.conf"
#: URL prefixes of Flower 1.42's HTTP services (`flwr/superlink/routers/*/router.py`).
FLEET_PREFIX, CONTROL_PREFIX = "/v1/fleet/", "/v1/control/"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class FrontError(RegistryError):
    """The front cannot be configured as asked (a bad address, a certificate without a
    name nginx can verify)."""


@dataclass(frozen=True)
class FrontPlan:
    """Where the front listens and the loopback SuperLink it passes to."""

    pki: pki_module.Pki
    listen_host: str
    listen_port: int
    superlink_port: int
    superlink_host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        """The address devices and a remote operator connect to."""
        return f"{self.listen_host}:{self.listen_port}"


def parse_address(value: str, option: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port), one error line naming `option` otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FrontError(option, f"{value!r} is not HOST:PORT (a port 1-65535)")
    return host.strip("[]"), int(port)


def require_loopback(host: str, option: str) -> None:
    """The SuperLink behind a front must not be reachable around it."""
    if host not in LOOPBACK:
        raise FrontError(option, f"{host} is not a loopback address: behind the front the "
                         "SuperLink must listen on 127.0.0.1 only")


def upstream_name(server_cert: Path) -> str:
    """A DNS name of the SuperLink's certificate, which nginx verifies the upstream by."""
    cert = x509.load_pem_x509_certificate(server_cert.read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    names = sans.get_values_for_type(x509.DNSName)
    if not names:
        raise FrontError("--pki-dir", f"{server_cert} names no DNS host (nginx verifies the "
                         "SuperLink by name, not IP): `fedmsr pki init --host localhost …`")
    return "localhost" if "localhost" in names else names[0]


def _listen(host: str, port: int) -> str:
    try:
        return f"[{host}]:{port}" if ipaddress.ip_address(host).version == 6 else \
            f"{host}:{port}"
    except ValueError:
        return f"{host}:{port}"


def render(plan: FrontPlan) -> str:
    """The nginx configuration (one `http` server) for `plan`."""
    ca = plan.pki.ca_cert.resolve()
    cert, key = plan.pki.server_cert.resolve(), plan.pki.server_key.resolve()
    name = upstream_name(plan.pki.server_cert)
    upstream = _listen(plan.superlink_host, plan.superlink_port)
    unit = pki_module.OPERATOR_UNIT
    return f"""\
# fedmsr deployment front (generated by `fedmsr superlink start --front`; docs/deployment.md).
# Run: nginx -c THIS_FILE -p THIS_DIR/ -g 'daemon off;'
# Devices: Fleet API for anyone; Control API only with an operator certificate
# (`fedmsr pki operator`); Runtime API and everything else: 404.
worker_processes 1;
pid nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log access.log;
    client_body_temp_path body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
    # 1 only for a client certificate that chains to the fleet CA and says OU={unit}.
    map "$ssl_client_verify:$ssl_client_s_dn" $fedmsr_operator {{
        default 0;
        "~^SUCCESS:(.*,)?OU={unit}(,|$)" 1;
    }}
    upstream fedmsr_superlink {{
        server {upstream};
        keepalive 16;
    }}
    server {{
        listen {_listen(plan.listen_host, plan.listen_port)} ssl;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        # Asked of every client, required below for the Control API only.
        ssl_client_certificate {ca};
        ssl_verify_client optional;
        ssl_verify_depth 1;
        client_max_body_size 0;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_read_timeout 1h;
        proxy_send_timeout 1h;
        proxy_ssl_trusted_certificate {ca};
        proxy_ssl_verify on;
        proxy_ssl_verify_depth 1;
        proxy_ssl_name {name};
        proxy_ssl_server_name on;
        proxy_ssl_session_reuse on;
        location {FLEET_PREFIX} {{
            proxy_pass https://fedmsr_superlink;
        }}
        location {CONTROL_PREFIX} {{
            if ($fedmsr_operator = 0) {{
                return 403;
            }}
            proxy_pass https://fedmsr_superlink;
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


def write(plan: FrontPlan, directory: Path) -> Path:
    """Write the configuration into `directory` (nginx's prefix); return its path."""
    plan.pki.require()
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / CONF_FILE
    conf.write_text(render(plan))
    return conf


def nginx() -> str | None:
    """Debian's nginx (in /usr/sbin, often not on a user's PATH), else whatever is."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def command(conf: Path, binary: str = "nginx") -> list[str]:
    """The foreground nginx command for a written front (stop it by its PID)."""
    return [binary, "-c", str(conf.resolve()), "-p", f"{conf.resolve().parent}/",
            "-g", "daemon off;"]
