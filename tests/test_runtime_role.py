"""The run's PostgreSQL role, with exactly the grant set `fedmsr db grants` prints: a run
works under it, and each test below plays that role as an attacker who wants a device's
spend lowered (or a revoked device back) and shows that it gets nothing.

Real PostgreSQL at 127.0.0.1:5432 (trust auth), a real LOGIN role created per test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, ProgrammingError

from fl_server import privacy_ledger as ledger
from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
from fl_server.registry import db
from fl_server.registry.runtime_role import grant_statements
from privacy.accounting import DpEvent
from tests.conftest import POSTGRES_ADMIN_URL
from tests.helpers import SMALL, fedmsr, history
from tests.test_ledger_adversary import reference_epsilon

DELTA = 1e-5
STEP = DpEvent(sample_rate=0.25, noise_multiplier=1.1, steps=4)


@pytest.fixture
def roles(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(owner URL, runtime URL, schema): a migrated schema owned by the admin, and a fresh
    LOGIN role holding only `grant_statements` on it."""
    schema, role = f"fedmsr_rt_{secrets.token_hex(5)}", f"fedmsr_rt_{secrets.token_hex(5)}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
        c.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    owner = f"{POSTGRES_ADMIN_URL}?options=-csearch_path%3D{schema}"
    runtime = (POSTGRES_ADMIN_URL.replace("postgres@", f"{role}@", 1)
               + f"?options=-csearch_path%3D{schema}")
    try:
        db.upgrade(owner)
        with admin.connect() as c:
            for statement in grant_statements(role, schema):
                c.execute(text(statement))
        yield owner, runtime, schema
    finally:
        db.dispose_engines()
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            c.execute(text(f'DROP OWNED BY "{role}"'))
            c.execute(text(f'DROP ROLE "{role}"'))
        admin.dispose()


def _as(url: str) -> Engine:
    return create_engine(url, isolation_level="AUTOCOMMIT")


def _refused(engine: Engine, sql: str, params: dict | None = None) -> str:
    with engine.connect() as c, pytest.raises(DBAPIError) as caught:
        c.execute(text(sql), params or {})
    return str(caught.value.orig)


def test_the_runtime_role_charges_but_cannot_lower_a_spend(roles, tmp_path) -> None:
    owner, runtime, _ = roles
    # room for exactly three releases
    cap = (reference_epsilon([STEP] * 3) + reference_epsilon([STEP] * 4)) / 2
    enroll(owner, [DeviceSpec("cam-0", epsilon_cap=cap, delta_cap=DELTA),
                   DeviceSpec("cam-1", epsilon_cap=cap, delta_cap=DELTA)],
           BundleOptions(bundles_dir=tmp_path / "devices"))
    with _as(owner).connect() as c:
        ids = {name: i for name, i in c.execute(text("SELECT name, id FROM devices"))}
    device = ids["cam-0"]

    # The run's own work goes through: reserve, commit, read.
    for round_number in (1, 2):
        done = ledger.reserve(runtime, "r", round_number,
                              [ledger.Release(i, STEP) for i in ids.values()], DELTA, None)
        assert sorted(done.reserved) == sorted(ids.values()) and not done.refused
        ledger.commit(runtime, "r", round_number, ids.values())
    state = ledger.budget_state(runtime, device, DELTA)
    assert state.epsilon == pytest.approx(reference_epsilon([STEP] * 2), rel=1e-2)

    engine = _as(runtime)
    zeros = np.zeros(len(np.frombuffer(_cached(engine, device), "<f8")), "<f8").tobytes()
    # No write right on the cache, the caps, the revocation, or the ledger's history ...
    for sql in (f"UPDATE device_budgets SET rdp = :z WHERE device_id = {device}",
                f"INSERT INTO device_budgets VALUES ({device} + 1000, :z, 'x', 0, now())",
                f"DELETE FROM device_budgets WHERE device_id = {device}",
                f"DELETE FROM privacy_events WHERE device_id = {device}",
                f"UPDATE privacy_events SET noise_multiplier = 50 WHERE device_id = {device}",
                f"UPDATE devices SET epsilon_cap = 1e6 WHERE id = {device}",
                "ALTER TABLE device_budgets DISABLE TRIGGER ALL",
                "DROP FUNCTION fedmsr_record_budget(integer, bytea, varchar, integer, "
                "timestamptz)"):
        message = _refused(engine, sql, {"z": zeros})
        assert "permission denied" in message or "must be owner" in message, (sql, message)

    # ... and its one writer refuses a lower vector: alone, with a forged new event row (the
    # role may append rows), or via a temporary table shadowing the real one.
    writer = "SELECT fedmsr_record_budget(:d, :z, :sha, :n, now())"
    events = _event_count(engine, device)
    assert "changes only together" in _refused(
        engine, writer, {"d": device, "z": zeros, "sha": ledger.ORDERS_SHA256, "n": events})
    with engine.connect() as c:  # a forged release (it stays: it only adds spend) ...
        c.execute(text("INSERT INTO privacy_events (device_id, run_id, round_number, kind, "
                       "sample_rate, noise_multiplier, steps, status, reserved_at) VALUES "
                       "(:d, 'forged', 1, 'local-dp-sgd', 1e-9, 1e3, 1, 'reserved', now())"),
                  {"d": device})
    lower = {"d": device, "z": zeros, "sha": ledger.ORDERS_SHA256, "n": events + 1}
    assert "must not be below the old one" in _refused(engine, writer, lower)  # ... in vain
    with engine.connect() as c:
        c.execute(text("CREATE TEMP TABLE device_budgets (device_id int primary key, rdp "
                       "bytea, orders_sha256 varchar, events int, updated_at timestamptz)"))
        with pytest.raises(DBAPIError, match="must not be below the old one"):
            c.execute(text(writer), lower)  # the function still writes the real table
        assert c.execute(text("SELECT count(*) FROM pg_temp.device_budgets")).scalar_one() == 0
        c.execute(text("DROP TABLE pg_temp.device_budgets"))
    assert _cached(engine, device) != zeros
    # A revoked device stays revoked: the role may move `status`, not `revoked_at`.
    with _as(owner).connect() as c:
        c.execute(text("UPDATE devices SET status = 'revoked', revoked_at = now() "
                       f"WHERE id = {ids['cam-1']}"))
    assert "ck_devices_revoked_at" in _refused(
        engine, f"UPDATE devices SET status = 'active' WHERE id = {ids['cam-1']}")

    # After all of it, the cap still holds: the third release fits, the fourth never does.
    assert ledger.reserve(runtime, "r", 3, [ledger.Release(device, STEP)], DELTA, None
                          ).reserved == (device,)
    fourth = ledger.reserve(runtime, "r", 4, [ledger.Release(device, STEP)], DELTA, None)
    assert fourth.reserved == () and [r.device_id for r in fourth.refused] == [device]
    engine.dispose()


def _cached(engine: Engine, device: int) -> bytes:
    with engine.connect() as c:
        return bytes(c.execute(text("SELECT rdp FROM device_budgets WHERE device_id = :d"),
                               {"d": device}).scalar_one())


def _event_count(engine: Engine, device: int) -> int:
    with engine.connect() as c:
        return int(c.execute(text("SELECT events FROM device_budgets WHERE device_id = :d"),
                             {"d": device}).scalar_one())


@pytest.mark.slow
def test_a_run_under_the_runtime_role(roles, tmp_path) -> None:
    """`fedmsr run` with the registry reached as the restricted role: the whole round's
    writes (run, round, participation, audit, ledger, cache) fit the grant set."""
    owner, runtime, _ = roles
    enrolled = fedmsr("--db", owner, "fleet", "enroll", "--count", "2", "--prefix", "cam-",
                      "--epsilon-cap", "50", cwd=tmp_path, timeout=120)
    assert enrolled.returncode == 0, enrolled.stderr
    result = fedmsr("--db", runtime, "run", "--devices", "2", "--rounds", "1", "--seed", "2",
                    *SMALL, "--dp", "local", "--delta", str(DELTA),
                    "--runs-dir", str(tmp_path / "runs"), "--run-id", "rt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["devices"] for r in history(tmp_path / "runs" / "rt")] == [[0, 1]]
    with _as(owner).connect() as c:
        assert c.execute(text("SELECT status, completed_rounds FROM runs")).one() == (
            "completed", 1)
        assert c.execute(text("SELECT count(*) FROM privacy_events WHERE status = 'committed'")
                         ).scalar_one() == 2
        assert sorted(c.execute(text("SELECT events FROM device_budgets")).scalars()) == [1, 1]
        assert set(c.execute(text("SELECT status FROM devices")).scalars()) == {"active"}
    with pytest.raises(ProgrammingError, match="permission denied"), \
            _as(runtime).connect() as c:
        c.execute(text("UPDATE device_budgets SET events = events"))


def test_grants_refuse_what_is_not_an_identifier(capsys) -> None:
    from fl_server.cli import main

    assert main(["db", "grants", "fedmsr_runtime", "--schema", "fleet"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines() == [f"{g};" for g in grant_statements("fedmsr_runtime", "fleet")]
    assert 'ON SCHEMA "fleet" TO "fedmsr_runtime"' in printed
    assert "device_budgets" not in printed  # nothing on the cache but through its function
    assert main(["db", "grants", 'x"; DROP TABLE devices; --']) == 2
    assert "error: ROLE: role must be a PostgreSQL identifier" in capsys.readouterr().err
    assert main(["db", "grants", "ok", "--schema", "1bad"]) == 2
    assert "error: --schema: schema must be" in capsys.readouterr().err
