"""Ledger integrity: the cached RDP vector moves only with new event rows; finite caps.

Revision 0002 made ``privacy_events`` append-only, but its rule for ``device_budgets`` only
kept the event *count* from dropping: the vector itself (``rdp``) could be overwritten
with zeros, and enforcement read that vector to decide who is still within budget. This
revision ties the cache to the rows, whoever connects to the database:

* ``device_budgets.events`` always equals the device's number of ``privacy_events`` rows
  (checked on INSERT and UPDATE);
* ``rdp`` (and ``orders_sha256``) change only in an UPDATE that adds events: an UPDATE that
  rewrites the vector without a new event row is refused. Whether the new vector is the
  right one the database cannot compute (RDP of a sampled Gaussian is not SQL), so
  enforcement recomputes it from the rows before every charge
  (``fl_server.privacy_ledger.reserve``); this revision removes the cheap ways around it.

And a device's ``epsilon_cap`` must be finite: an infinite cap was accepted at enrollment
and then made every reservation for the device fail (a CHECK, as for the other caps).
A database that already holds an infinite cap is not upgraded: the error names the
devices and what to do.

Revision ID: 0004_ledger_integrity
Revises: 0003_representations
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_ledger_integrity"
down_revision = "0003_representations"
branch_labels = None
depends_on = None

#: The largest finite double: a cap above it is +inf (NaN fails every comparison).
MAX_FINITE = "1.7976931348623157e308"
_CAP_BEFORE = "epsilon_cap IS NULL OR epsilon_cap > 0"
_CAP_AFTER = f"epsilon_cap IS NULL OR (epsilon_cap > 0 AND epsilon_cap <= {MAX_FINITE})"

_ROWS = "(SELECT count(*) FROM privacy_events WHERE device_id = NEW.device_id)"
_TIED = "device_budgets: the RDP vector changes only together with new privacy_events rows"
_COUNT = "device_budgets.events must equal the number of the device privacy_events rows"

_RULES = {
    "sqlite": [
        ("CREATE TRIGGER device_budgets_vector_tied BEFORE UPDATE ON device_budgets "
         "WHEN NEW.orders_sha256 IS NOT OLD.orders_sha256 OR (NEW.events <= OLD.events AND "
         f"NEW.rdp IS NOT OLD.rdp) BEGIN SELECT RAISE(ABORT, '{_TIED}'); END"),
        ("CREATE TRIGGER device_budgets_count_update BEFORE UPDATE ON device_budgets "
         f"WHEN NEW.events != {_ROWS} BEGIN SELECT RAISE(ABORT, '{_COUNT}'); END"),
        ("CREATE TRIGGER device_budgets_count_insert BEFORE INSERT ON device_budgets "
         f"WHEN NEW.events != {_ROWS} BEGIN SELECT RAISE(ABORT, '{_COUNT}'); END"),
    ],
    "postgresql": [
        ("CREATE FUNCTION device_budgets_tied_to_events() RETURNS trigger AS $$ BEGIN "
         "IF TG_OP = 'UPDATE' AND (NEW.orders_sha256 IS DISTINCT FROM OLD.orders_sha256 OR "
         "(NEW.events <= OLD.events AND NEW.rdp IS DISTINCT FROM OLD.rdp)) THEN "
         f"RAISE EXCEPTION '{_TIED}'; END IF; "
         f"IF NEW.events <> {_ROWS} THEN RAISE EXCEPTION '{_COUNT}'; END IF; "
         "RETURN NEW; END $$ LANGUAGE plpgsql"),
        ("CREATE TRIGGER device_budgets_tied_to_events BEFORE INSERT OR UPDATE ON "
         "device_budgets FOR EACH ROW EXECUTE FUNCTION device_budgets_tied_to_events()"),
    ],
}
_DROP_RULES = {
    "sqlite": ["DROP TRIGGER device_budgets_vector_tied",
               "DROP TRIGGER device_budgets_count_update",
               "DROP TRIGGER device_budgets_count_insert"],
    "postgresql": ["DROP TRIGGER device_budgets_tied_to_events ON device_budgets",
                   "DROP FUNCTION device_budgets_tied_to_events()"],
}


def upgrade() -> None:
    bind = op.get_bind()
    infinite = bind.execute(sa.text(
        "SELECT name FROM devices WHERE epsilon_cap IS NOT NULL AND NOT "
        f"(epsilon_cap > 0 AND epsilon_cap <= {MAX_FINITE}) ORDER BY id")).scalars().all()
    if infinite:
        raise RuntimeError(
            f"devices {', '.join(infinite)} have an infinite epsilon cap, which no reservation "
            "can use: set a finite cap (or NULL for the run's default) with `UPDATE devices "
            "SET epsilon_cap = <finite> WHERE name = ...`, then upgrade again")
    _set_cap_check(_CAP_BEFORE, _CAP_AFTER)
    for statement in _RULES.get(bind.dialect.name, []):
        op.execute(statement)


def downgrade() -> None:
    for statement in _DROP_RULES.get(op.get_bind().dialect.name, []):
        op.execute(statement)
    _set_cap_check(_CAP_AFTER, _CAP_BEFORE)


def _set_cap_check(old: str, new: str) -> None:
    """Replace ck_devices_epsilon_cap. PostgreSQL: drop and add. SQLite cannot alter a
    CHECK and a rebuild of `devices` would cascade into every table that references it, so
    the stored SQL is edited in place (as revision 0002 does for `runs`; SQLite's
    lang_altertable.html section 7): every existing row satisfies the new check (above)."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        name = bind.execute(sa.text(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'devices'::regclass "
            "AND contype = 'c' AND conname LIKE :name"), {"name": "%epsilon_cap"}).scalar_one()
        op.execute(f'ALTER TABLE devices DROP CONSTRAINT "{name}"')
        op.execute(f'ALTER TABLE devices ADD CONSTRAINT "{name}" CHECK ({new})')
        return
    before, after = f"CHECK ({old})", f"CHECK ({new})"
    sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' "
                               "AND name = 'devices'").scalar_one()
    if sql.count(before) != 1:
        raise RuntimeError(f"devices table: expected one {before!r} in {sql!r}")
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' "
                         "AND name = 'devices'", (sql.replace(before, after),))
    bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")
    if bind.exec_driver_sql("PRAGMA integrity_check").scalar_one() != "ok":
        raise RuntimeError("devices table: integrity check failed after narrowing "
                           "ck_devices_epsilon_cap")
