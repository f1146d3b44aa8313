"""`fedmsr pki init`: a private CA and the SuperLink's TLS certificate (`cryptography`).

The SuperLink serves TLS with a certificate signed by this CA; every device bundle
carries the CA certificate (`ca.pem`), so a SuperNode trusts exactly this SuperLink and no
public CA. Keys are ECDSA P-384; private keys are written 0600 and never overwritten
(`--force` replaces the whole PKI, which invalidates every bundle's `ca.pem`).

`fedmsr pki operator` issues the operator's *client* certificate from the same CA
(`operator.pem`, `operator.key`, extended key usage clientAuth, `OU=operator`). The
deployment front (`fl_server/front.py`) admits a Control API call only with such a
certificate: Flower's own Control API has no authentication. Devices never hold one (they
authenticate to the Fleet API with their enrollment keys), and the SuperLink's server
certificate is refused as a client because it lacks the `OU=operator` subject.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fl_server.registry.db import RegistryError

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.pem", "ca.key", "server.pem", "server.key"
OPERATOR_CERT, OPERATOR_KEY = "operator.pem", "operator.key"
#: The subject unit the front requires of a Control API client certificate.
OPERATOR_UNIT = "operator"
DEFAULT_DIR = Path("pki")


@dataclass(frozen=True)
class Pki:
    """Paths of an initialised PKI directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / CA_CERT

    @property
    def server_cert(self) -> Path:
        return self.root / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.root / SERVER_KEY

    @property
    def ca_key(self) -> Path:
        return self.root / CA_KEY

    @property
    def operator_cert(self) -> Path:
        return self.root / OPERATOR_CERT

    @property
    def operator_key(self) -> Path:
        return self.root / OPERATOR_KEY

    def require(self) -> Pki:
        missing = [p.name for p in (self.ca_cert, self.server_cert, self.server_key)
                   if not p.exists()]
        if missing:
            raise RegistryError("--pki-dir", f"{self.root} has no {', '.join(missing)}; "
                                "run `fedmsr pki init` first")
        return self


def init_pki(root: Path, hosts: list[str], days: int = 825, force: bool = False) -> Pki:
    """Create the CA and a server certificate valid for `hosts` (IP addresses or names)."""
    pki = Pki(root)
    if not hosts:
        raise RegistryError("--host", "give at least one address the SuperLink is reached at")
    if pki.ca_cert.exists() and not force:
        raise RegistryError("--pki-dir", f"{root} already holds a CA; --force replaces it "
                            "(and invalidates every device bundle's ca.pem)")
    sans = [_san(h) for h in hosts]
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmsr fleet CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                            False), critical=True)
               .sign(ca_key, hashes.SHA384()))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
                   .issuer_name(ca_name).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=days))
                   .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False)
                   .sign(ca_key, hashes.SHA384()))
    root.mkdir(parents=True, exist_ok=True)
    _write_private(root / CA_KEY, ca_key)
    _write_private(root / SERVER_KEY, server_key)
    pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return pki


def issue_operator(root: Path, name: str = "operator", days: int = 90,
                   force: bool = False) -> Pki:
    """Issue the operator's client certificate (for the front's Control API) from the CA.

    Short-lived by default (90 days): the front checks the CA's signature, validity and
    the `OU=operator` subject, not a revocation list, so expiry is what ends a leaked one
    (or `--force` re-issuing after replacing the whole PKI).
    """
    pki = Pki(root).require()
    if not pki.ca_key.exists():
        raise RegistryError("--pki-dir", f"{root} has no {CA_KEY}: issue operator "
                            "certificates where the CA key is kept")
    if not name or any(c in name for c in ',+="\\<>;#/\n'):
        raise RegistryError("--name", f"{name!r} is not a plain name (no , + = \" \\ < > ; # /)")
    if pki.operator_cert.exists() and not force:
        raise RegistryError("--pki-dir", f"{pki.operator_cert} exists; --force replaces it")
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise RegistryError("--pki-dir", f"{pki.ca_key} is not an EC private key")
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmsr"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, OPERATOR_UNIT),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA384()))
    _write_private(pki.operator_key, key)
    pki.operator_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pki


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
