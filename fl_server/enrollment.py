"""Device enrollment: identities, keys, budget caps and device bundles.

Each enrollment generates the device's key pair with `cryptography`: an ECDSA key on NIST
P-384 in OpenSSH form, the form Flower's SuperNode authentication takes
(`flower-supernode --auth-supernode-private-key`, `flwr supernode register`). The registry
keeps only the public key; the private key goes into the device's **bundle** directory
(what a device maker flashes), mode 0600, next to the device id, the SuperLink address
and the CA certificate when a PKI exists.

All-or-nothing: the rows (devices + audit entries) go in one transaction and the bundles
are written into a staging directory first, moved into place only after the commit. A bad
manifest line, a duplicate name or a database error leaves neither rows nor bundles.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import re
import secrets
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from fl_server.registry import audit
from fl_server.registry.db import RegistryError, in_chunks, session_scope
from fl_server.registry.models import DATA_SOURCES, PROFILES, Device, DeviceStatus, utcnow
from privacy.checks import is_finite

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_SUPERLINK = "127.0.0.1:9092"
DEFAULT_EPSILON_CAP = 8.0
DEFAULT_DELTA_CAP = 1e-5
MANIFEST_COLUMNS = ("name", "profile", "epsilon_cap", "delta_cap", "info_bits_cap",
                    "device_index", "data_source", "consent_training", "consent_evaluation")
#: The largest data index one may ask for: the registry's column is a 32-bit INTEGER on
#: PostgreSQL, and the next automatic index (the largest + 1) must fit it too.
MAX_DEVICE_INDEX = 2**31 - 2
#: Longest manifest field accepted (a device name is 64 characters; caps are numbers).
MANIFEST_FIELD_LIMIT = 4096
#: Bundle file names (read by `fedmsr device start` and by device makers).
KEY_FILE, INFO_FILE, CA_FILE = "device.key", "device.json", "ca.pem"


@dataclass(frozen=True)
class DeviceSpec:
    """What the operator asks for one device (validated before anything is written)."""

    name: str
    profile: str = "glasses"
    epsilon_cap: float | None = DEFAULT_EPSILON_CAP
    delta_cap: float | None = DEFAULT_DELTA_CAP
    info_bits_cap: float | None = None
    device_index: int | None = None
    data_source: str = "synthetic"
    consent_training: bool = True
    consent_evaluation: bool = True

    def validate(self, where: str = "") -> DeviceSpec:
        def bad(name: str, problem: str) -> RegistryError:
            # "--" : the command line's options (--device-index); else a manifest's columns
            return RegistryError(f"{where}{name.replace('_', '-') if where == '--' else name}",
                                 problem)

        if not NAME_PATTERN.match(self.name):
            raise bad("name", f"{self.name!r} is not a valid device name (letters, digits, "
                      "'.', '_', '-'; starts with a letter or digit; at most 64 characters)")
        if self.profile not in PROFILES:
            raise bad("profile", f"must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if self.data_source not in DATA_SOURCES:
            raise bad("data_source", f"must be one of {', '.join(DATA_SOURCES)}, "
                      f"got {self.data_source!r}")
        for cap in ("epsilon_cap", "info_bits_cap"):
            value = getattr(self, cap)
            if value is not None and not (is_finite(value) and value > 0):
                raise bad(cap, f"must be a finite number > 0 (or empty for no cap), "
                          f"got {value}")
        if self.delta_cap is not None and not 0 < self.delta_cap < 1:
            raise bad("delta_cap", f"must be in (0, 1), got {self.delta_cap}")
        if self.device_index is not None and not 0 <= self.device_index <= MAX_DEVICE_INDEX:
            raise bad("device_index", f"must be between 0 and {MAX_DEVICE_INDEX}, "
                      f"got {self.device_index}")
        return self


_SPEC_FIELDS = tuple(f.name for f in fields(DeviceSpec))


@dataclass(frozen=True)
class KeyPair:
    private_openssh: bytes
    public_openssh: str
    fingerprint: str


@dataclass(frozen=True)
class BundleOptions:
    """Where bundles go and what a device needs to reach the SuperLink."""

    bundles_dir: Path = Path("devices")
    superlink: str = DEFAULT_SUPERLINK
    ca_certificate: Path | None = None


@dataclass
class EnrollResult:
    enrolled: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# -- keys ---------------------------------------------------------------------------------


def generate_keypair() -> KeyPair:
    """A fresh P-384 key pair in OpenSSH form (private key unencrypted: it lives on the device)."""
    key = ec.generate_private_key(ec.SECP384R1())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    return KeyPair(private, public, fingerprint(public))


def fingerprint(public_openssh: str) -> str:
    """SHA-256 of the key blob, as `ssh-keygen -l` prints it."""
    blob = base64.b64decode(public_openssh.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# -- specs from the command line or a manifest --------------------------------------------


def specs_for_count(count: int, prefix: str, template: DeviceSpec) -> list[DeviceSpec]:
    """`--count N --prefix P`: devices P0 .. P{N-1}, all with the template's settings."""
    if count < 1:
        raise RegistryError("--count", f"must be a positive integer, got {count}")
    if not prefix:
        raise RegistryError("--prefix", "is required with --count (e.g. --prefix glasses-)")
    if template.device_index is not None:
        raise RegistryError("--device-index", "cannot be combined with --count; "
                            "indices are assigned in order")
    return [replace(template, name=f"{prefix}{i}").validate("--prefix: ") for i in range(count)]


def specs_from_manifest(path: Path, template: DeviceSpec) -> list[DeviceSpec]:
    """A CSV with a header row; `name` is required, other columns override the defaults."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise RegistryError("--manifest", f"cannot read {path}: {exc.strerror}") from None
    try:
        rows = _manifest_rows(text)
    except csv.Error as exc:
        raise RegistryError("--manifest", f"{path} is not a readable CSV: {exc}") from None
    header = rows[0] if rows else []
    unknown = [c for c in header if c not in MANIFEST_COLUMNS]
    if "name" not in header or unknown:
        problem = (f"unknown column {unknown[0]!r}" if unknown else "has no 'name' column")
        raise RegistryError("--manifest", f"{path} {problem}; the header may hold "
                            f"{', '.join(MANIFEST_COLUMNS)} ('name' is required)")
    twice = [c for c, n in Counter(header).items() if n > 1]
    if twice:
        raise RegistryError("--manifest", f"{path}: column {twice[0]!r} appears more than "
                            "once in the header")
    specs = []
    for line, values in enumerate(rows[1:], start=2):
        if len(values) != len(header):
            raise RegistryError("--manifest", f"{path} line {line}: expected "
                                f"{len(header)} fields ({', '.join(header)})")
        row = dict(zip(header, values, strict=True))
        specs.append(_spec_from_row(row, template, f"--manifest {path} line {line}: "))
    if not specs:
        raise RegistryError("--manifest", f"{path} lists no devices")
    return specs


def _manifest_rows(text: str) -> list[list[str]]:
    """The CSV's rows (blank lines skipped); csv.Error for a field longer than
    `MANIFEST_FIELD_LIMIT` (named with its line) or a malformed line."""
    rows: list[list[str]] = []
    reader = csv.reader(text.splitlines())
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            raise csv.Error(f"line {reader.line_num}: {exc}") from None
        if not values:
            continue
        longest = max(len(v) for v in values)
        if longest > MANIFEST_FIELD_LIMIT:
            raise csv.Error(f"line {reader.line_num}: a field of {longest} characters (the "
                            f"limit is {MANIFEST_FIELD_LIMIT})")
        rows.append(values)


def _spec_from_row(row: dict[str, str], template: DeviceSpec, where: str) -> DeviceSpec:
    values: dict[str, Any] = {}
    for column, raw in row.items():
        raw = raw.strip()
        if column == "name":
            values["name"] = raw
        elif raw == "":
            if column.endswith("_cap"):
                values[column] = None
        elif column in ("profile", "data_source"):
            values[column] = raw
        elif column.startswith("consent_"):
            if raw.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise RegistryError(f"{where}{column}", f"{raw!r} is not true/false")
            values[column] = raw.lower() in ("true", "yes", "1")
        else:
            try:
                values[column] = int(raw) if column == "device_index" else float(raw)
            except ValueError:
                kind = "an integer" if column == "device_index" else "a number"
                raise RegistryError(f"{where}{column}", f"{raw!r} is not {kind}") from None
    return replace(template, **values).validate(where)


# -- enrollment ---------------------------------------------------------------------------


def enroll(url: str, specs: Sequence[DeviceSpec], options: BundleOptions,
           skip_existing: bool = False) -> EnrollResult:
    """Enroll `specs` in one transaction and write their bundles; all or nothing.

    With `skip_existing`, names already enrolled (and not revoked) are left alone, which
    makes a scripted enrollment (the demo's) safe to repeat.
    """
    _refuse_duplicates_within(specs)
    ca_pem = _read_ca(options.ca_certificate)
    result = EnrollResult()
    staging = options.bundles_dir / f".staging-{secrets.token_hex(4)}"
    try:
        wrote = _enroll_rows(url, specs, options, skip_existing, ca_pem, result, staging)
    except BaseException:  # nothing committed: no bundle may remain either
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if wrote:  # committed: move the bundles into place (a rename each)
        _publish(staging, options.bundles_dir)
    return result


def _enroll_rows(url: str, specs: Sequence[DeviceSpec], options: BundleOptions,
                 skip_existing: bool, ca_pem: bytes | None, result: EnrollResult,
                 staging: Path) -> bool:
    """The transaction: rows and audit entries, bundles staged; False when nothing to do."""
    with session_scope(url) as session:
        existing = _existing_names(session, [s.name for s in specs])
        if existing and not skip_existing:
            name = min(existing)
            raise RegistryError("name", f"a device named {name!r} is already enrolled "
                                f"({len(existing)} of these names are taken); pick new names "
                                "(a revoked device comes back only under a new enrollment)")
        result.skipped = sorted(existing)
        todo = [s for s in specs if s.name not in existing]
        if not todo:
            return False
        _refuse_existing_bundles(options.bundles_dir, todo)
        todo = _assign_indices(session, todo)
        keys = [generate_keypair() for _ in todo]
        bundle_dir = str(options.bundles_dir.resolve())
        rows = [_device_row(spec, key, bundle_dir) for spec, key in zip(todo, keys, strict=True)]
        ids = session.execute(insert(Device).returning(Device.id, sort_by_parameter_order=True),
                              rows).scalars().all()
        audit.record_many(session, "device.enroll", [
            (device_id, _audit_detail(spec, key, len(todo)))
            for device_id, spec, key in zip(ids, todo, keys, strict=True)])
        result.enrolled = [{"id": device_id, **_flat(spec), "key_fingerprint": key.fingerprint}
                           for device_id, spec, key in zip(ids, todo, keys, strict=True)]
        session.flush()
        # Last step before the commit; if the commit fails, enroll() removes the staging dir.
        _write_bundles(staging, result.enrolled, keys, options.superlink, ca_pem)
        return True


def _refuse_duplicates_within(specs: Sequence[DeviceSpec]) -> None:
    if not specs:
        raise RegistryError("name", "no device to enroll")
    twice = [name for name, n in Counter(s.name for s in specs).items() if n > 1]
    if twice:
        raise RegistryError("name", f"{twice[0]!r} is listed more than once; names are unique")
    indices = [s.device_index for s in specs if s.device_index is not None]
    twice_idx = [i for i, n in Counter(indices).items() if n > 1]
    if twice_idx:
        raise RegistryError("device_index", f"{twice_idx[0]} is listed more than once")


def _read_ca(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RegistryError("--ca-cert", f"cannot read {path}: {exc.strerror}") from None


def _existing_names(session: Session, names: list[str]) -> set[str]:
    found: set[str] = set()
    for chunk in in_chunks(names):
        found.update(session.scalars(select(Device.name).where(Device.name.in_(chunk))))
    return found


def _refuse_existing_bundles(bundles_dir: Path, specs: Sequence[DeviceSpec]) -> None:
    if bundles_dir.exists() and not bundles_dir.is_dir():
        raise RegistryError("--bundles-dir", f"{bundles_dir} exists and is not a directory")
    for spec in specs:
        if (bundles_dir / spec.name).exists():
            raise RegistryError("--bundles-dir", f"{bundles_dir / spec.name} already exists; "
                                "move it away or choose another --bundles-dir")


def _assign_indices(session: Session, specs: list[DeviceSpec]) -> list[DeviceSpec]:
    """Give each device its data index: as asked, else after every index ever assigned.

    An explicit index (e.g. a replacement for a revoked device's footage) must not be held
    by a device that is still enrolled or active.
    """
    asked = [s.device_index for s in specs if s.device_index is not None]
    for chunk in in_chunks(asked):
        held = session.scalars(select(Device.device_index).where(
            Device.device_index.in_(chunk),
            Device.status != DeviceStatus.REVOKED.value)).first()
        if held is not None:
            raise RegistryError("device_index", f"{held} belongs to an enrolled device; revoke "
                                "it first or leave the index out to get a new one")
    top = session.scalar(select(func.max(Device.device_index)))
    following = max([-1 if top is None else top, *asked]) + 1
    out = []
    for spec in specs:
        if spec.device_index is None:
            spec = replace(spec, device_index=following)
            following += 1
        out.append(spec)
    return out


def _flat(spec: DeviceSpec) -> dict[str, Any]:
    """The spec's fields (dataclasses.asdict deep-copies; this runs 10,000 times in bulk)."""
    return {name: getattr(spec, name) for name in _SPEC_FIELDS}


def _device_row(spec: DeviceSpec, key: KeyPair, bundle_dir: str) -> dict[str, Any]:
    return {**_flat(spec), "public_key": key.public_openssh, "key_fingerprint": key.fingerprint,
            "status": DeviceStatus.ENROLLED.value, "created_at": utcnow(),
            "bundle_dir": bundle_dir}


def _audit_detail(spec: DeviceSpec, key: KeyPair, batch: int) -> dict[str, Any]:
    return {**{k: v for k, v in _flat(spec).items() if k != "name"}, "name": spec.name,
            "key_fingerprint": key.fingerprint, "batch_size": batch}


def _write_bundles(staging: Path, devices: list[dict[str, Any]], keys: list[KeyPair],
                   superlink: str, ca_pem: bytes | None) -> None:
    """Write every bundle under the (new) staging directory."""
    try:
        staging.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir(mode=0o700)
        for device, key in zip(devices, keys, strict=True):
            _write_bundle(staging / device["name"], device, key, superlink, ca_pem)
    except OSError as exc:
        raise RegistryError("--bundles-dir", f"cannot write device bundles under "
                            f"{staging.parent}: {exc.strerror or exc}; nothing was enrolled"
                            ) from None


def _write_bundle(path: Path, device: dict[str, Any], key: KeyPair, superlink: str,
                  ca_pem: bytes | None) -> None:
    path.mkdir(mode=0o700)
    fd = os.open(path / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_openssh)
    info = {"device_id": device["id"], "name": device["name"], "profile": device["profile"],
            "superlink": superlink, "data_source": device["data_source"],
            "device_index": device["device_index"], "key_fingerprint": key.fingerprint,
            "public_key": key.public_openssh,
            "ca_certificate": CA_FILE if ca_pem is not None else None}
    (path / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    if ca_pem is not None:
        (path / CA_FILE).write_bytes(ca_pem)


def _publish(staging: Path, bundles_dir: Path) -> None:
    for bundle in sorted(staging.iterdir()):
        bundle.rename(bundles_dir / bundle.name)
    staging.rmdir()
