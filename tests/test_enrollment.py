"""`fedmsr fleet …` through the real CLI entry (`fl_server.cli.main`), on SQLite and
PostgreSQL: keys and bundles, listing, revocation, the audit log, and bad input that
leaves nothing half-written."""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text

from fl_server import enrollment
from fl_server.cli import main
from fl_server.config import RunConfig
from fl_server.registry import db
from fl_server.registry.fleet import fleet_for_new_run, fleet_for_resume
from tests.helpers import fedmsr


@pytest.fixture
def registry(registry_url, tmp_path, monkeypatch):
    """A migrated registry, the working directory in tmp_path, a known operator name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDMSR_DB", registry_url)
    monkeypatch.setenv("FEDMSR_OPERATOR", "alice")
    assert main(["db", "upgrade"]) == 0
    return registry_url


def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def rows(url: str, sql: str) -> list[tuple]:
    with db.get_engine(url).connect() as connection:
        return [tuple(r) for r in connection.execute(text(sql))]


def fleet(capsys) -> list[dict]:
    code, out, _ = cli(capsys, "fleet", "list", "--json")
    assert code == 0
    return json.loads(out)


def test_enroll_writes_a_bundle_whose_key_the_registry_knows_only_publicly(registry, capsys,
                                                                          tmp_path) -> None:
    code, _, err = cli(capsys, "fleet", "enroll", "cam-1", "--profile", "bodycam",
                       "--epsilon-cap", "3.5", "--superlink", "127.0.0.1:9100")
    assert code == 0, err
    bundle = tmp_path / "devices" / "cam-1"
    key_path = bundle / enrollment.KEY_FILE
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    private = serialization.load_ssh_private_key(key_path.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"  # the curve Flower's SuperNode auth documents
    derived = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                serialization.PublicFormat.OpenSSH).decode()
    info = json.loads((bundle / enrollment.INFO_FILE).read_text())
    [(device_id, public_key, profile, cap, status)] = rows(
        registry, "SELECT id, public_key, profile, epsilon_cap, status FROM devices")
    assert public_key == derived and info["device_id"] == device_id
    assert (profile, cap, status) == ("bodycam", 3.5, "enrolled")
    assert info["superlink"] == "127.0.0.1:9100" and info["ca_certificate"] is None
    # Nothing private in the registry: no table holds the private key or any part of it.
    private_blob = key_path.read_text().split("\n", 1)[1][:60]
    dump = json.dumps(rows(registry, "SELECT * FROM devices") +
                      rows(registry, "SELECT * FROM audit_log"), default=str)
    assert "PRIVATE" not in dump and private_blob not in dump


def test_list_show_revoke_and_the_audit_trail(registry, capsys) -> None:
    assert cli(capsys, "fleet", "enroll", "--count", "3", "--prefix", "g-")[0] == 0
    devices = fleet(capsys)
    assert [(d["name"], d["profile"], d["status"], d["device_index"]) for d in devices] == [
        ("g-0", "glasses", "enrolled", 0), ("g-1", "glasses", "enrolled", 1),
        ("g-2", "glasses", "enrolled", 2)]
    assert all({"id", "name", "profile", "status"} <= set(d) for d in devices)
    target = str(devices[1]["id"])
    code, out, err = cli(capsys, "fleet", "revoke", target, "--reason", "stolen at the gym")
    assert code == 0, err
    code, out, _ = cli(capsys, "fleet", "show", "g-1")
    shown = json.loads(out)
    assert shown["status"] == "revoked" and shown["revoke_reason"] == "stolen at the gym"
    assert shown["revoked_at"] is not None and shown["public_key"].startswith("ecdsa-sha2-nistp384")
    assert [(a["action"], a["actor"]) for a in shown["audit"]] == [
        ("device.enroll", "alice"), ("device.revoke", "alice")]
    assert shown["audit"][1]["detail"]["reason"] == "stolen at the gym"
    # Revocation is permanent: a second revoke is refused, the key stays revoked.
    code, _, err = cli(capsys, "fleet", "revoke", "g-1", "--reason", "again")
    assert code == 2 and "already revoked" in err
    assert [d["status"] for d in fleet(capsys)] == ["enrolled", "revoked", "enrolled"]
    code, out, _ = cli(capsys, "fleet", "audit", "--json")
    assert [e["action"] for e in json.loads(out)] == ["device.enroll"] * 3 + ["device.revoke"]


@pytest.mark.parametrize("args, needle", [
    (["fleet", "show", "404"], "ID: no device '404'"),
    (["fleet", "revoke", "nobody", "--reason", "x"], "ID: no device 'nobody'"),
    (["fleet", "revoke", "g-0"], "--reason: is required"),
    (["fleet", "enroll", "g-0"], "name: a device named 'g-0' is already enrolled"),
    (["fleet", "enroll", "--count", "3", "--prefix", "g-"], "already enrolled"),
    (["fleet", "enroll", "bad/name"], "name: 'bad/name' is not a valid device name"),
    (["fleet", "enroll", "x", "--profile", "drone"], "--profile: must be one of"),
    (["fleet", "enroll", "x", "--epsilon-cap", "0"], "--epsilon-cap: must be a finite number > 0"),
    # An infinite cap used to be accepted and then failed every DP reservation.
    (["fleet", "enroll", "x", "--epsilon-cap", "inf"], "--epsilon-cap: must be a finite number"),
    (["fleet", "enroll", "x", "--epsilon-cap", "1e309"], "--epsilon-cap: must be a finite"),
    (["fleet", "enroll", "x", "--epsilon-cap", "nan"], "--epsilon-cap: must be a finite"),
    (["fleet", "enroll", "x", "--info-bits-cap", "inf"], "--info-bits-cap: must be a finite"),
    (["fleet", "enroll", "x", "--device-index", "0"], "device_index: 0 belongs to"),
    (["fleet", "enroll"], "give exactly one of NAME"),
    (["fleet", "enroll", "x", "--count", "2"], "give exactly one of NAME"),
])
def test_bad_input_is_one_line_and_writes_nothing(registry, capsys, tmp_path, args, needle
                                                  ) -> None:
    assert cli(capsys, "fleet", "enroll", "g-0")[0] == 0
    before = (rows(registry, "SELECT * FROM devices"), rows(registry, "SELECT * FROM audit_log"),
              sorted(p.name for p in (tmp_path / "devices").iterdir()))
    code, _, err = cli(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
    after = (rows(registry, "SELECT * FROM devices"), rows(registry, "SELECT * FROM audit_log"),
             sorted(p.name for p in (tmp_path / "devices").iterdir()))
    assert after == before


def write_csv(path: Path, header: list[str], lines: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(lines)
    return path


def test_manifest_enrolls_all_or_nothing(registry, capsys, tmp_path) -> None:
    good = [["m-0", "glasses", "2.0", "", "5"], ["m-1", "home-cam", "", "100", "7"]]
    header = ["name", "profile", "epsilon_cap", "info_bits_cap", "device_index"]
    bad_cases = {
        "bad number": (header, [*good, ["m-2", "bodycam", "abc", "", "9"]], "line 4: epsilon_cap"),
        "bad profile": (header, [*good, ["m-2", "drone", "1", "", "9"]], "line 4: profile"),
        "ragged": (header, [*good, ["m-2", "bodycam"]], "line 4: expected 5 fields"),
        "unknown column": (["name", "colour"], [["m-0", "red"]], "unknown column 'colour'"),
        "no name": (["profile"], [["glasses"]], "has no 'name' column"),
        "twice": (header, [*good, good[0]], "'m-0' is listed more than once"),
        "index twice": (header, [*good, ["m-2", "bodycam", "1", "", "5"]], "5 is listed more"),
    }
    for label, (head, lines, needle) in bad_cases.items():
        manifest = write_csv(tmp_path / f"{label}.csv", head, lines)
        code, _, err = cli(capsys, "fleet", "enroll", "--manifest", str(manifest))
        assert code == 2 and needle in err and err.count("\n") == 1, (label, err)
        assert rows(registry, "SELECT count(*) FROM devices") == [(0,)], label
        assert not (tmp_path / "devices").exists() or not any((tmp_path / "devices").iterdir())
    manifest = write_csv(tmp_path / "good.csv", header, good)
    assert cli(capsys, "fleet", "enroll", "--manifest", str(manifest))[0] == 0
    assert [(d["name"], d["profile"], d["epsilon_cap"], d["info_bits_cap"], d["device_index"])
            for d in fleet(capsys)] == [("m-0", "glasses", 2.0, None, 5),
                                        ("m-1", "home-cam", None, 100.0, 7)]


def test_bulk_enrollment_with_a_ca_is_repeatable_with_skip_existing(registry, capsys,
                                                                    tmp_path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    args = ["fleet", "enroll", "--count", "4", "--prefix", "demo-", "--ca-cert", str(ca),
            "--skip-existing"]
    assert cli(capsys, *args)[0] == 0
    first = {d["name"]: d["key_fingerprint"] for d in fleet(capsys)}
    keys = {p.name: (p / enrollment.KEY_FILE).read_bytes() for p in (tmp_path / "devices").iterdir()}
    assert sorted(keys) == [f"demo-{i}" for i in range(4)]
    assert all((tmp_path / "devices" / n / "ca.pem").read_bytes() == ca.read_bytes() for n in keys)
    code, out, _ = cli(capsys, *args)
    assert code == 0 and "0 device(s) enrolled" in out
    assert {d["name"]: d["key_fingerprint"] for d in fleet(capsys)} == first
    assert keys == {p.name: (p / enrollment.KEY_FILE).read_bytes()
                    for p in (tmp_path / "devices").iterdir()}
    assert len(set(first.values())) == 4  # one key per device


def test_a_failure_while_writing_bundles_rolls_back_the_rows(registry, tmp_path,
                                                             monkeypatch) -> None:
    """Fault injection in the bundle writer: the transaction rolls back, no bundle remains."""
    real = enrollment._write_bundle
    calls = []

    def failing(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(enrollment, "_write_bundle", failing)
    specs = [enrollment.DeviceSpec(f"d-{i}") for i in range(5)]
    with pytest.raises(db.RegistryError, match="No space left on device; nothing was enrolled"):
        enrollment.enroll(registry, specs, enrollment.BundleOptions(tmp_path / "devices"))
    assert rows(registry, "SELECT count(*) FROM devices") == [(0,)]
    assert rows(registry, "SELECT count(*) FROM audit_log") == [(0,)]
    assert list((tmp_path / "devices").iterdir()) == []


def test_an_existing_bundle_directory_is_not_overwritten(registry, capsys, tmp_path) -> None:
    (tmp_path / "devices" / "g-1").mkdir(parents=True)
    code, _, err = cli(capsys, "fleet", "enroll", "--count", "3", "--prefix", "g-")
    assert code == 2 and "--bundles-dir" in err and "g-1 already exists" in err
    assert rows(registry, "SELECT count(*) FROM devices") == [(0,)]
    assert sorted(p.name for p in (tmp_path / "devices").iterdir()) == ["g-1"]


def test_a_run_takes_the_eligible_devices_from_the_registry(registry, capsys) -> None:
    assert cli(capsys, "fleet", "enroll", "--count", "5", "--prefix", "g-")[0] == 0
    assert cli(capsys, "fleet", "enroll", "shy", "--no-consent-training")[0] == 0  # index 5
    assert cli(capsys, "fleet", "revoke", "g-1", "--reason", "lost")[0] == 0
    cfg = fleet_for_new_run(RunConfig(devices=6, run_id="r"))
    assert cfg.device_indices == [0, 2, 3, 4]  # not revoked g-1, not non-consenting `shy`
    assert fleet_for_new_run(RunConfig(devices=3, run_id="r")).device_indices == [0, 2]
    assert cli(capsys, "fleet", "revoke", "g-3", "--reason", "broken")[0] == 0
    resumed, dropped = fleet_for_resume(cfg)
    assert resumed.device_indices == [0, 2, 4] and dropped == [3]


def test_no_registry_means_the_whole_synthetic_fleet(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDMSR_DB", raising=False)
    assert fleet_for_new_run(RunConfig(devices=4, run_id="r")).device_indices is None
    assert not (tmp_path / "fedmsr.db").exists()


def test_the_console_script_reports_an_unreachable_database_in_one_line(tmp_path) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/test"
    for args in (["fleet", "list"], ["fleet", "enroll", "x"],
                 ["run", "--runs-dir", str(tmp_path / "runs")]):
        result = fedmsr("--db", url, *args, timeout=120, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: --db: cannot use the registry database")
        assert result.stderr.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == []  # no bundle, no run directory, no database


def test_run_with_an_empty_registry_is_refused_before_anything_starts(registry, tmp_path
                                                                      ) -> None:
    result = fedmsr("--db", registry, "run", "--runs-dir", str(tmp_path / "runs"), timeout=120,
                    cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --devices: the registry") and "fleet enroll" in \
        result.stderr
    assert not (tmp_path / "runs").exists()
