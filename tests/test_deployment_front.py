"""The deployment front: Debian's nginx in front of a loopback SuperLink, configured by
`fedmsr superlink start --front`. Played as an outsider who reaches the front's port: the
Control API (list, register, unregister, start runs) is refused without the operator's
certificate, and even with the SuperLink's own server certificate; the Runtime API is not
reachable at all. Devices still connect and train through it, and the operator's
`fedmsr fleet sync` and `fedmsr run --superlink` work with the certificate.

nginx and every other process started here run on 127.0.0.1 and are stopped by PID (with
their children) in `finally`; Debian's nginx service is never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from flwr.cli.typing import SuperLinkConnection
from flwr.proto.control_pb2 import (  # pylint: disable=no-name-in-module
    ListNodesRequest,
    RegisterNodeRequest,
    StartRunRequest,
    UnregisterNodeRequest,
)

from fl_server import control_api, deployment, enrollment, front, pki
from fl_server.registry.db import RegistryError
from tests.helpers import FEDMSR, SMALL, fedmsr, history
from tests.test_deployment import STARTUP_S, _answers, _listening, start, stop, wait_until

RUN_S = 480.0


def _nginx() -> str:
    found = front.nginx()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is missing: .ci/run must install Debian's nginx")
        pytest.skip("nginx not installed (apt-get install nginx)")
    return found


@pytest.fixture()
def fleet_pki(tmp_path) -> pki.Pki:
    pki.init_pki(tmp_path / "pki", ["127.0.0.1", "localhost"])
    return pki.issue_operator(tmp_path / "pki")


# -- the operator certificate and the configuration (fast) ---------------------------------


def test_the_operator_certificate_is_a_client_certificate_of_the_fleet_ca(fleet_pki) -> None:
    ca = x509.load_pem_x509_certificate(fleet_pki.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(fleet_pki.operator_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    units = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert [u.value for u in units] == [pki.OPERATOR_UNIT]
    assert fleet_pki.operator_key.stat().st_mode & 0o777 == 0o600
    with pytest.raises(RegistryError, match="--force replaces it"):
        pki.issue_operator(fleet_pki.root)


def test_no_operator_certificate_without_the_ca_key(fleet_pki) -> None:
    fleet_pki.ca_key.unlink()
    with pytest.raises(RegistryError, match="no ca.key"):
        pki.issue_operator(fleet_pki.root, force=True)


def test_the_front_passes_fleet_and_gates_control_on_the_operator_unit(fleet_pki,
                                                                       tmp_path) -> None:
    conf = front.write(front.FrontPlan(fleet_pki, "127.0.0.1", 19443, 19092),
                       tmp_path / "front")
    text = conf.read_text()
    control = text.split(f"location {front.CONTROL_PREFIX} {{")[1].split("location")[0]
    fleet = text.split(f"location {front.FLEET_PREFIX} {{")[1].split("location")[0]
    assert "return 403" in control and "proxy_pass" in control
    assert "return 403" not in fleet and "proxy_pass" in fleet
    assert "location / {\n            return 404;" in text  # Runtime API and the rest
    assert "ssl_verify_client optional;" in text and "proxy_ssl_verify on;" in text
    assert "server 127.0.0.1:19092;" in text and "listen 127.0.0.1:19443 ssl;" in text
    binary = front.nginx()
    if binary is not None:  # nginx itself accepts it (syntax, certificates, keys)
        checked = subprocess.run([binary, "-t", *front.command(conf)[1:5]],
                                 capture_output=True, text=True, timeout=60, check=False)
        assert checked.returncode == 0, checked.stderr


def test_a_front_needs_a_loopback_superlink_and_a_dns_name(tmp_path) -> None:
    with pytest.raises(front.FrontError, match="not a loopback address"):
        front.require_loopback("0.0.0.0", "--host")
    with pytest.raises(front.FrontError, match="not HOST:PORT"):
        front.parse_address("127.0.0.1:99999", "--front")
    ip_only = pki.init_pki(tmp_path / "ip-only", ["10.0.0.1"])
    with pytest.raises(front.FrontError, match="names no DNS host"):
        front.render(front.FrontPlan(ip_only, "0.0.0.0", 9443, 9092))
    result = fedmsr("superlink", "start", "--pki-dir", str(ip_only.root), "--host", "0.0.0.0",
                    "--front", "0.0.0.0:9443", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --host: 0.0.0.0 is not a loopback address")


# -- through a real nginx (slow) -----------------------------------------------------------


def _outsider(front_address: str, ca: Path,
              cert: control_api.ClientCertificate | None = None):
    conn = SuperLinkConnection(name="outsider", address=front_address,
                                           root_certificates=str(ca))
    return control_api.client_with_certificate(conn, cert)


def _refused(what: str, request) -> str:
    with pytest.raises(RegistryError) as refused:
        control_api.call(what, request)
    return str(refused.value)


@pytest.mark.slow
@pytest.mark.extended  # the front's configuration and refusals are tested above, quickly
def test_through_the_front_control_needs_the_operator_and_devices_still_train(
        tmp_path, monkeypatch) -> None:
    binary = _nginx()
    host_home, remote_home = tmp_path / "flwr-host", tmp_path / "flwr-remote"
    monkeypatch.setenv("FLWR_HOME", str(host_home))
    monkeypatch.setenv("FEDMSR_DB", f"sqlite:///{tmp_path / 'fedmsr.db'}")
    link_port, front_port = deployment.free_port(), deployment.free_port()
    front_address = f"127.0.0.1:{front_port}"
    for args in (["pki", "init", "--pki-dir", "pki"], ["pki", "operator", "--pki-dir", "pki"],
                 ["db", "upgrade"],
                 ["fleet", "enroll", "--count", "2", "--prefix", "dev-",
                  "--superlink", front_address]):
        result = fedmsr(*args, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stderr
    keys = pki.Pki(tmp_path / "pki")
    procs: list[subprocess.Popen] = []
    try:
        superlink = start(["superlink", "start", "--pki-dir", "pki", "--port", str(link_port),
                           "--front", front_address], tmp_path, tmp_path / "superlink.log")
        procs.append(superlink)
        conf = tmp_path / "superlink" / front.FRONT_DIR / front.CONF_FILE
        wait_until(lambda: conf.exists(), STARTUP_S, "the front's configuration", [superlink])
        log = (tmp_path / "nginx.log").open("w")
        nginx = subprocess.Popen(front.command(conf, binary), stdout=log,
                                 stderr=subprocess.STDOUT)
        nginx.log_path = tmp_path / "nginx.log"  # type: ignore[attr-defined]
        procs.append(nginx)
        wait_until(lambda: _listening(link_port) and _answers(host_home), STARTUP_S,
                   "the SuperLink", [superlink])
        wait_until(lambda: _listening(front_port), STARTUP_S, "nginx", [nginx])

        # (a) An outsider at the front: every Control call is refused by nginx: 403 without
        # a certificate; 400 with the SuperLink's own (CA-signed, but not for client auth
        # and without OU=operator: nginx rejects the handshake's certificate outright).
        server_cert = control_api.ClientCertificate(keys.server_cert, keys.server_key)
        device_key = json.loads((tmp_path / "devices" / "dev-0" / enrollment.INFO_FILE)
                                .read_text())["public_key"]
        for cert, status in ((None, "403 Forbidden"), (server_cert, "400 Bad Request")):
            with _outsider(front_address, keys.ca_cert, cert) as outsider:
                for what, request in (
                        ("listing", lambda: outsider.ListNodes(ListNodesRequest())),
                        ("registering", lambda: outsider.RegisterNode(RegisterNodeRequest(
                            public_key=control_api.pem_public_key(device_key)))),
                        ("unregistering", lambda: outsider.UnregisterNode(
                            UnregisterNodeRequest(node_id=1))),
                        ("starting a run", lambda: outsider.StartRun(StartRunRequest()))):
                    assert status in _refused(what, request), what
        # The Runtime API is not behind the front at all.
        runtime = httpx.post(f"https://{front_address}/v1/runtime/get-nodes",
                             verify=str(keys.ca_cert), content=b"")
        assert runtime.status_code == 404
        # Nothing got through: the SuperLink (on loopback) knows no node.
        assert deployment.online_nodes(host_home) == {}

        # (c) The operator, elsewhere, through the front with its certificate.
        monkeypatch.setenv("FLWR_HOME", str(remote_home))
        result = fedmsr("superlink", "connect", front_address, "--pki-dir", "pki",
                        cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stderr
        result = fedmsr("fleet", "sync", cwd=tmp_path, timeout=300)
        assert result.returncode == 0 and "registered 2 key(s)" in result.stdout, \
            result.stdout + result.stderr
        # Flower's own CLI has no way to present the certificate: refused at the front.
        flwr = subprocess.run([str(Path(FEDMSR[0]).parent / "flwr"), "supernode", "list",
                               control_api.CONNECTION, "--format", "json"],
                              capture_output=True, text=True, timeout=120, check=False,
                              env={**os.environ, "FLWR_HOME": str(remote_home)})
        assert '"success": true' not in flwr.stdout

        # (b) Devices connect through the front (their bundles name it) and train.
        for name in ("dev-0", "dev-1"):
            procs.append(start(["device", "start", f"devices/{name}"], tmp_path,
                               tmp_path / f"{name}.log"))
        wait_until(lambda: sorted(deployment.online_nodes(remote_home).values())
                   == ["online"] * 2, STARTUP_S, "2 SuperNodes online through the front",
                   procs)
        run = start(["run", "--superlink", front_address, "--devices", "2", "--rounds", "1",
                     *SMALL, "--run-id", "front"], tmp_path, tmp_path / "run.log")
        procs.append(run)
        assert run.wait(timeout=RUN_S) == 0, ((tmp_path / "run.log").read_text()[-3000:]
                                              + (tmp_path / "superlink.log").read_text()[-3000:])
        [row] = history(tmp_path / "runs" / "front")
        assert row["devices"] == [0, 1] and row["aborted"] is None
        access = (conf.parent / "access.log").read_text()
        assert "/v1/fleet/pull-messages" in access and "/v1/control/start-run" in access
    finally:
        for proc in reversed(procs):
            stop(proc)


def test_a_half_configured_operator_certificate_is_one_error(fleet_pki, tmp_path) -> None:
    home = tmp_path / "flwr"
    deployment.write_flwr_config(home, "127.0.0.1:9443", fleet_pki.ca_cert)
    assert control_api.client_certificate(home) is None
    config = home / "config.toml"
    config.write_text(config.read_text() + f'{control_api.CLIENT_CERT_KEY} = "/x.pem"\n')
    with pytest.raises(RegistryError, match=f"needs both {control_api.CLIENT_CERT_KEY}"):
        control_api.client_certificate(home)


def test_connect_needs_the_operator_certificate(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    pki.init_pki(tmp_path / "pki", ["localhost"])
    result = fedmsr("superlink", "connect", "127.0.0.1:9443", "--pki-dir", "pki",
                    cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "no operator.pem, operator.key" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "flwr" / "config.toml").exists()
