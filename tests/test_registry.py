"""The registry schema: migrations match the models, constraints hold, the audit log is
append-only, bad URLs fail in one line. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from fl_server.config import RunConfig
from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
from fl_server.registry import db
from fl_server.registry.models import Base
from fl_server.registry_observer import RegistryObserver
from fl_server.revocation import revoke
from fl_server.run_status import RunStatus
from privacy.wire.round_record import RoundRecord
from tests.helpers import round_record

TABLES = {"devices", "runs", "rounds", "round_participation", "audit_log", "alembic_version"}


def test_upgrade_creates_the_schema_and_is_idempotent(registry_url) -> None:
    assert db.current_revision(registry_url) is None
    assert db.upgrade(registry_url) == (None, db.head_revision())
    assert db.upgrade(registry_url) == (db.head_revision(), db.head_revision())
    tables = set(inspect(db.get_engine(registry_url)).get_table_names())
    assert TABLES <= tables


def test_models_match_the_migrations(registry_url) -> None:
    """Alembic's autogenerate, run against the migrated database, finds nothing to change."""
    db.upgrade(registry_url)
    with db.get_engine(registry_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True,
                                                               "compare_server_default": True})
        assert compare_metadata(context, Base.metadata) == []


def test_a_database_without_the_schema_is_refused(registry_url) -> None:
    with pytest.raises(db.RegistryError, match="db upgrade` first"):
        db.require_schema(registry_url)


def test_missing_sqlite_file_is_not_created_by_a_read(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'nothing.db'}"
    with pytest.raises(db.RegistryError, match="has no fedmsr registry"):
        db.require_schema(url)
    assert not (tmp_path / "nothing.db").exists()


@pytest.mark.parametrize("url, needle", [
    ("not a url", "is not a database URL"),
    ("mysql://x@127.0.0.1/db", "unsupported database"),
    ("postgresql+psycopg://postgres@127.0.0.1:1/test", "cannot use the registry database"),
    ("sqlite:////nonexistent-dir/x/fedmsr.db", "cannot use the registry database"),
])
def test_bad_or_unreachable_database_is_one_clear_error(url: str, needle: str) -> None:
    with pytest.raises(db.RegistryError, match=needle) as info:
        db.upgrade(url)
    assert str(info.value).startswith("--db: ") and "\n" not in str(info.value)


def test_audit_log_is_append_only_in_the_database(registry_url, tmp_path) -> None:
    """Not only the ORM: raw UPDATE and DELETE are refused by the database's triggers."""
    db.upgrade(registry_url)
    enroll(registry_url, [DeviceSpec("cam-0")], BundleOptions(bundles_dir=tmp_path / "b"))
    engine = db.get_engine(registry_url)
    for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(text(statement))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT actor FROM audit_log")).scalars().all() != [
            "mallory"]
        assert connection.execute(text("SELECT count(*) FROM audit_log")).scalar() == 1


def test_check_constraints_hold_in_the_database(registry_url, tmp_path) -> None:
    """A revoked status without a timestamp, or an unknown profile, never reaches a row."""
    db.upgrade(registry_url)
    enroll(registry_url, [DeviceSpec("cam-0")], BundleOptions(bundles_dir=tmp_path / "b"))
    engine = db.get_engine(registry_url)
    for statement in ("UPDATE devices SET status = 'revoked'",
                      "UPDATE devices SET profile = 'drone'",
                      "UPDATE devices SET epsilon_cap = -1"):
        with pytest.raises(DBAPIError), engine.begin() as connection:
            connection.execute(text(statement))


def _record(round_number: int, devices: list[int], dp: bool = False) -> RoundRecord:
    return round_record(
        round_number, sampled=len(devices), responded=len(devices), devices=devices,
        dp_events=[{"device": d, "sample_rate": 0.5, "noise_multiplier": 1.1, "steps": 4}
                   for d in devices] if dp else [])


def test_observer_records_runs_rounds_and_participation(registry_url, tmp_path) -> None:
    """Device indices map to registry devices; the replacement of a revoked device, enrolled
    for the same data index, gets the participation; first participation -> active."""
    db.upgrade(registry_url)
    opts = BundleOptions(bundles_dir=tmp_path / "b")
    enroll(registry_url, [DeviceSpec(f"cam-{i}") for i in range(3)], opts)
    revoke(registry_url, "cam-1", "lost")
    enroll(registry_url, [DeviceSpec("cam-1b", device_index=1)], opts)
    cfg = RunConfig(devices=3, rounds=2, run_id="r1", runs_dir=str(tmp_path / "runs"),
                    device_indices=[0, 1, 2])
    observer = RegistryObserver(registry_url)
    observer.run_started(cfg, 0)
    observer.round_finished(cfg, _record(1, [0, 1], dp=True))
    observer.round_finished(cfg, _record(1, [0, 1], dp=True))  # a repeat is not a new round
    observer.run_finished(cfg, RunStatus("failed", 2, completed_rounds=1, reason="boom"))
    with db.get_engine(registry_url).connect() as c:
        run = c.execute(text("SELECT status, completed_rounds, reason, config_json FROM runs"
                             )).one()
        assert run[:3] == ("failed", 1, "boom")
        assert json.loads(run[3])["device_indices"] == [0, 1, 2]
        rows = c.execute(text(
            "SELECT d.name, p.device_index, p.dp_noise_multiplier, p.dp_steps FROM "
            "round_participation p JOIN devices d ON d.id = p.device_id ORDER BY d.name")).all()
        assert [tuple(r) for r in rows] == [("cam-0", 0, 1.1, 4), ("cam-1b", 1, 1.1, 4)]
        status = dict(c.execute(text("SELECT name, status FROM devices")).all())
        assert status == {"cam-0": "active", "cam-1": "revoked", "cam-1b": "active",
                          "cam-2": "enrolled"}
        assert c.execute(text("SELECT count(*) FROM rounds")).scalar() == 1
        actions = c.execute(text("SELECT action FROM audit_log WHERE run_id = 'r1'")).scalars()
        assert list(actions) == ["run.start"]


def test_observer_backfills_rounds_on_resume(registry_url, tmp_path) -> None:
    """A round checkpointed but not recorded (the DB was down) is recorded on resume."""
    from fl_server.history import write_history

    db.upgrade(registry_url)
    enroll(registry_url, [DeviceSpec(f"cam-{i}") for i in range(2)],
           BundleOptions(bundles_dir=tmp_path / "b"))
    cfg = RunConfig(devices=2, rounds=3, run_id="r2", runs_dir=str(tmp_path / "runs"),
                    device_indices=[0, 1])
    cfg.run_dir().mkdir(parents=True)
    observer = RegistryObserver(registry_url)
    observer.run_started(cfg, 0)
    observer.round_finished(cfg, _record(1, [0, 1]))
    write_history(cfg.run_dir(), [_record(1, [0, 1]), _record(2, [1])])  # round 2 unrecorded
    observer.run_started(cfg, 2)
    with db.get_engine(registry_url).connect() as c:
        rounds = c.execute(text("SELECT number, responded FROM rounds ORDER BY number")).all()
        assert [tuple(r) for r in rounds] == [(1, 2), (2, 1)]
        assert c.execute(text("SELECT status, completed_rounds FROM runs")).one() == (
            "running", 2)


# SQLite serialises writers (the observer's transaction holds the database lock), so the
# interleaving below can only happen on PostgreSQL.
@pytest.mark.parametrize("registry_url", ["postgresql"], indirect=True)
def test_a_revocation_while_a_round_is_recorded_stays_revoked(
        registry_url, tmp_path, monkeypatch) -> None:
    """The operator revokes a device after the observer loaded it (enrolled) and before the
    observer's transaction commits: the device stays revoked, and recording the round does
    not fail (a read-then-write of `status` would either un-revoke the device or trip the
    status/revoked_at CHECK and fail the run). Found by the deployment test in CI."""
    from fl_server import registry_observer

    db.upgrade(registry_url)
    enroll(registry_url, [DeviceSpec(f"cam-{i}") for i in range(2)],
           BundleOptions(bundles_dir=tmp_path / "b"))
    cfg = RunConfig(devices=2, rounds=1, run_id="r3", runs_dir=str(tmp_path / "runs"),
                    device_indices=[0, 1])
    observer = RegistryObserver(registry_url)
    observer.run_started(cfg, 0)
    loaded = registry_observer.devices_for_indices
    revoked: list[dict] = []

    def load_then_revoke(session, indices):  # the operator's transaction commits in between
        devices = loaded(session, indices)
        assert devices[1].name == "cam-1" and devices[1].status == "enrolled"
        revoked.append(revoke(registry_url, "cam-1", "stolen"))
        return devices
    monkeypatch.setattr(registry_observer, "devices_for_indices", load_then_revoke)
    observer.round_finished(cfg, _record(1, [0, 1]))
    assert [d["status"] for d in revoked] == ["revoked"]
    with db.get_engine(registry_url).connect() as c:
        status = dict(c.execute(text("SELECT name, status FROM devices")).all())
        assert status == {"cam-0": "active", "cam-1": "revoked"}
        assert c.execute(text("SELECT count(*) FROM round_participation")).scalar() == 2


def test_two_revocations_at_once_record_one(registry_url, tmp_path, monkeypatch) -> None:
    """A second operator revokes the same device between the first one's lookup and its
    write: the first sees it revoked (the row is re-read under lock) and says so; the
    audit log holds one revocation, with the reason that won."""
    from fl_server import revocation

    db.upgrade(registry_url)
    enroll(registry_url, [DeviceSpec("cam-0")], BundleOptions(bundles_dir=tmp_path / "b"))
    looked_up = revocation.find_device
    calls: list[str] = []

    def lookup_then_revoke_elsewhere(session, ident):
        device = looked_up(session, ident)
        if not calls:
            calls.append("other operator")
            revoke(registry_url, ident, "lost")
        return device
    monkeypatch.setattr(revocation, "find_device", lookup_then_revoke_elsewhere)
    with pytest.raises(db.RegistryError, match="already revoked"):
        revoke(registry_url, "cam-0", "stolen")
    with db.get_engine(registry_url).connect() as c:
        assert c.execute(text("SELECT revoke_reason FROM devices")).scalar() == "lost"
        assert c.execute(text("SELECT count(*) FROM audit_log WHERE action = 'device.revoke'"
                              )).scalar() == 1


def test_one_rule_maps_a_data_index_to_its_device(registry_url, tmp_path) -> None:
    """The device for a data index is the one not revoked, else the newest that held it:
    the same answer for the ledgers, the round history and the SecAgg+ identities (which
    leave out an index whose every device is revoked)."""
    from fl_server.registry.devices import device_ids_for_indices, eligible_indices
    from fl_server.secagg_identities import identities_table

    db.upgrade(registry_url)
    bundles = BundleOptions(bundles_dir=tmp_path / "b")
    old = enroll(registry_url, [DeviceSpec("cam-0"), DeviceSpec("cam-1")], bundles).enrolled
    revoke(registry_url, "cam-0", "replaced")
    new = enroll(registry_url, [DeviceSpec("cam-0b", device_index=0)], bundles).enrolled[0]
    assert device_ids_for_indices(registry_url, [0, 1]) == {0: new["id"], 1: old[1]["id"]}
    keys = identities_table(registry_url)
    assert set(keys) == {0, 1} and keys[0] != keys[1]
    assert eligible_indices(registry_url, 2) == [0, 1]
    revoke(registry_url, "cam-0b", "lost")
    assert device_ids_for_indices(registry_url, [0]) == {0: new["id"]}  # history stays its
    assert set(identities_table(registry_url)) == {1}
    assert eligible_indices(registry_url, 2) == [1]
