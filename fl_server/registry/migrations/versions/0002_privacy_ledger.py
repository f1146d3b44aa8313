"""Privacy ledger: append-only per-device DP events and the cached RDP vector per device.

Revision ID: 0002_privacy_ledger
Revises: 0001_initial
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_privacy_ledger"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

_TZ = sa.DateTime(timezone=True)

#: Every column but status/committed_at is frozen once written.
_FROZEN = ("id", "device_id", "run_id", "round_number", "kind", "sample_rate",
           "noise_multiplier", "steps", "reserved_at")
_SQLITE_SAME = " AND ".join(f"NEW.{c} IS OLD.{c}" for c in _FROZEN)
_PG_SAME = (f"({', '.join(f'NEW.{c}' for c in _FROZEN)}) IS NOT DISTINCT FROM "
            f"({', '.join(f'OLD.{c}' for c in _FROZEN)})")

#: The ledger is append-only at the database level, whoever connects to it: no DELETE, and
#: the only UPDATE is reserved -> committed with every other column unchanged. The cached
#: vector row may only move forward (its event count never drops), and is never deleted.
_LEDGER_RULES = {
    "sqlite": [
        ("CREATE TRIGGER privacy_events_no_delete BEFORE DELETE ON privacy_events "
         "BEGIN SELECT RAISE(ABORT, 'privacy_events is append-only'); END"),
        ("CREATE TRIGGER privacy_events_only_commit BEFORE UPDATE ON privacy_events "
         f"WHEN NOT (OLD.status = 'reserved' AND NEW.status = 'committed' AND {_SQLITE_SAME}) "
         "BEGIN SELECT RAISE(ABORT, 'privacy_events is append-only "
         "(the only update is reserved -> committed)'); END"),
        ("CREATE TRIGGER device_budgets_no_delete BEFORE DELETE ON device_budgets "
         "BEGIN SELECT RAISE(ABORT, 'device_budgets never decrease'); END"),
        ("CREATE TRIGGER device_budgets_forward_only BEFORE UPDATE ON device_budgets "
         "WHEN NEW.events < OLD.events OR NEW.device_id IS NOT OLD.device_id "
         "BEGIN SELECT RAISE(ABORT, 'device_budgets never decrease'); END"),
    ],
    "postgresql": [
        ("CREATE FUNCTION privacy_events_append_only() RETURNS trigger AS $$ BEGIN "
         "IF TG_OP = 'UPDATE' AND OLD.status = 'reserved' AND NEW.status = 'committed' "
         f"AND {_PG_SAME} THEN RETURN NEW; END IF; "
         "RAISE EXCEPTION 'privacy_events is append-only "
         "(the only update is reserved -> committed)'; END $$ LANGUAGE plpgsql"),
        ("CREATE TRIGGER privacy_events_append_only BEFORE UPDATE OR DELETE ON privacy_events "
         "FOR EACH ROW EXECUTE FUNCTION privacy_events_append_only()"),
        ("CREATE TRIGGER privacy_events_no_truncate BEFORE TRUNCATE ON privacy_events "
         "FOR EACH STATEMENT EXECUTE FUNCTION privacy_events_append_only()"),
        ("CREATE FUNCTION device_budgets_forward_only() RETURNS trigger AS $$ BEGIN "
         "IF TG_OP = 'UPDATE' AND NEW.events >= OLD.events AND NEW.device_id = OLD.device_id "
         "THEN RETURN NEW; END IF; "
         "RAISE EXCEPTION 'device_budgets never decrease'; END $$ LANGUAGE plpgsql"),
        ("CREATE TRIGGER device_budgets_forward_only BEFORE UPDATE OR DELETE ON device_budgets "
         "FOR EACH ROW EXECUTE FUNCTION device_budgets_forward_only()"),
        ("CREATE TRIGGER device_budgets_no_truncate BEFORE TRUNCATE ON device_budgets "
         "FOR EACH STATEMENT EXECUTE FUNCTION device_budgets_forward_only()"),
    ],
}
_DROP_LEDGER_RULES = {
    "sqlite": ["DROP TRIGGER privacy_events_no_delete", "DROP TRIGGER privacy_events_only_commit",
               "DROP TRIGGER device_budgets_no_delete",
               "DROP TRIGGER device_budgets_forward_only"],
    "postgresql": ["DROP TRIGGER privacy_events_no_truncate ON privacy_events",
                   "DROP TRIGGER privacy_events_append_only ON privacy_events",
                   "DROP FUNCTION privacy_events_append_only()",
                   "DROP TRIGGER device_budgets_no_truncate ON device_budgets",
                   "DROP TRIGGER device_budgets_forward_only ON device_budgets",
                   "DROP FUNCTION device_budgets_forward_only()"],
}


def upgrade() -> None:
    op.create_table(
        "privacy_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("round_number", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("sample_rate", sa.Float(), nullable=False),
        sa.Column("noise_multiplier", sa.Float(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reserved_at", _TZ, nullable=False),
        sa.Column("committed_at", _TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_privacy_events"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_privacy_events_device_id_devices"),
        sa.UniqueConstraint("device_id", "run_id", "round_number", "kind",
                            name="uq_privacy_events_device_id_run_id_round_number_kind"),
        sa.CheckConstraint("kind IN ('local-dp-sgd', 'central-dp-fedavg')",
                           name="ck_privacy_events_kind"),
        sa.CheckConstraint("status IN ('reserved', 'committed')",
                           name="ck_privacy_events_status"),
        sa.CheckConstraint("sample_rate > 0 AND sample_rate <= 1",
                           name="ck_privacy_events_sample_rate"),
        sa.CheckConstraint("noise_multiplier > 0", name="ck_privacy_events_noise_multiplier"),
        sa.CheckConstraint("steps >= 1", name="ck_privacy_events_steps"),
        sa.CheckConstraint("round_number >= 1", name="ck_privacy_events_round_number"),
        sa.CheckConstraint("(status = 'committed') = (committed_at IS NOT NULL)",
                           name="ck_privacy_events_committed_at"),
    )
    op.create_index("ix_privacy_events_run_id_round_number", "privacy_events",
                    ["run_id", "round_number"])
    op.create_table(
        "device_budgets",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("rdp", sa.LargeBinary(), nullable=False),
        sa.Column("orders_sha256", sa.String(64), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("updated_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("device_id", name="pk_device_budgets"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_device_budgets_device_id_devices"),
        sa.CheckConstraint("events >= 0", name="ck_device_budgets_events"),
    )
    for statement in _LEDGER_RULES.get(op.get_bind().dialect.name, []):
        op.execute(statement)
    _set_run_statuses(_RUN_STATUSES_BEFORE, _RUN_STATUSES_AFTER)


def downgrade() -> None:
    op.execute("UPDATE runs SET status = 'failed' WHERE status = 'budget-exhausted'")
    _set_run_statuses(_RUN_STATUSES_AFTER, _RUN_STATUSES_BEFORE)
    for statement in _DROP_LEDGER_RULES.get(op.get_bind().dialect.name, []):
        op.execute(statement)
    op.drop_table("device_budgets")
    op.drop_index("ix_privacy_events_run_id_round_number", table_name="privacy_events")
    op.drop_table("privacy_events")


# -- run status `budget-exhausted` (strategies/budget_selection.py) ---------------------------
_RUN_STATUSES_BEFORE = ("running", "completed", "failed")
_RUN_STATUSES_AFTER = ("running", "completed", "failed", "budget-exhausted")


def _statuses_check(statuses: tuple[str, ...]) -> str:
    return f"CHECK (status IN ({', '.join(repr(s) for s in statuses)}))"


def _set_run_statuses(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    """Replace ck_runs_status. PostgreSQL: drop and add the constraint. SQLite cannot alter
    a CHECK, and a batch rebuild of `runs` would DROP it, which (foreign_keys=ON, and the
    PRAGMA cannot be switched off inside this transaction) CASCADE-deletes every round: so
    the table's stored SQL is edited in place, SQLite's documented procedure for changing
    constraints that existing rows already satisfy (lang_altertable.html, section 7)."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":  # 0001 named it through the naming convention twice
        name = bind.execute(sa.text(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'runs'::regclass "
            "AND contype = 'c' AND conname LIKE :name"), {"name": "%runs_status"}).scalar_one()
        op.execute(f'ALTER TABLE runs DROP CONSTRAINT "{name}"')
        op.execute(f'ALTER TABLE runs ADD CONSTRAINT "{name}" {_statuses_check(new)}')
        return
    before, after = _statuses_check(old), _statuses_check(new)
    sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' "
                               "AND name = 'runs'").scalar_one()
    if sql.count(before) != 1:
        raise RuntimeError(f"runs table: expected one {before!r} in {sql!r}")
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'runs'",
                         (sql.replace(before, after),))
    bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")
    if bind.exec_driver_sql("PRAGMA integrity_check").scalar_one() != "ok":
        raise RuntimeError("runs table: integrity check failed after widening ck_runs_status")
