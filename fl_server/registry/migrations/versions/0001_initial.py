"""Initial registry: devices, runs, rounds, round participation, append-only audit log.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

_TZ = sa.DateTime(timezone=True)

#: The audit log is append-only at the database level too, whoever connects to it.
_APPEND_ONLY = {
    "sqlite": [
        f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
        f"BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
        for verb in ("UPDATE", "DELETE")
    ],
    "postgresql": [
        ("CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$ BEGIN "
        "RAISE EXCEPTION 'audit_log is append-only'; END $$ LANGUAGE plpgsql"),
        ("CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"),
    ],
}
_DROP_APPEND_ONLY = {
    "sqlite": ["DROP TRIGGER audit_log_no_update", "DROP TRIGGER audit_log_no_delete"],
    "postgresql": ["DROP TRIGGER audit_log_append_only ON audit_log",
                   "DROP FUNCTION audit_log_append_only()"],
}


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("profile", sa.String(16), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("key_fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("consent_training", sa.Boolean(), nullable=False),
        sa.Column("consent_evaluation", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("revoked_at", _TZ, nullable=True),
        sa.Column("revoke_reason", sa.Text(), nullable=True),
        sa.Column("epsilon_cap", sa.Float(), nullable=True),
        sa.Column("delta_cap", sa.Float(), nullable=True),
        sa.Column("info_bits_cap", sa.Float(), nullable=True),
        sa.Column("data_source", sa.String(16), nullable=False),
        sa.Column("device_index", sa.Integer(), nullable=True),
        sa.Column("superlink_node_id", sa.String(20), nullable=True),
        sa.Column("superlink_registered_at", _TZ, nullable=True),
        sa.Column("superlink_unregistered_at", _TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.CheckConstraint("profile IN ('glasses', 'bodycam', 'home-cam')",
                           name="ck_devices_profile"),
        sa.CheckConstraint("status IN ('enrolled', 'active', 'revoked')", name="ck_devices_status"),
        sa.CheckConstraint("data_source IN ('synthetic', 'footage')",
                           name="ck_devices_data_source"),
        sa.CheckConstraint("epsilon_cap IS NULL OR epsilon_cap > 0", name="ck_devices_epsilon_cap"),
        sa.CheckConstraint("delta_cap IS NULL OR (delta_cap > 0 AND delta_cap < 1)",
                           name="ck_devices_delta_cap"),
        sa.CheckConstraint("info_bits_cap IS NULL OR info_bits_cap > 0",
                           name="ck_devices_info_bits_cap"),
        sa.CheckConstraint("(status = 'revoked') = (revoked_at IS NOT NULL)",
                           name="ck_devices_revoked_at"),
        sa.UniqueConstraint("name", name="uq_devices_name"),
        sa.UniqueConstraint("public_key", name="uq_devices_public_key"),
        sa.UniqueConstraint("key_fingerprint", name="uq_devices_key_fingerprint"),
    )
    op.create_index("ix_devices_data_source_device_index", "devices",
                    ["data_source", "device_index"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("planned_rounds", sa.Integer(), nullable=False),
        sa.Column("completed_rounds", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("dp_sgd", sa.Boolean(), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("started_at", _TZ, nullable=False),
        sa.Column("finished_at", _TZ, nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.CheckConstraint("status IN ('running', 'completed', 'failed')", name="ck_runs_status"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", _TZ, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_audit_log_device_id_devices"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_device_id", "audit_log", ["device_id"])
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("finished_at", _TZ, nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("kl_bits", sa.Float(), nullable=False),
        sa.Column("utility_acc", sa.Float(), nullable=False),
        sa.Column("identity_acc", sa.Float(), nullable=False),
        sa.Column("sampled", sa.Integer(), nullable=False),
        sa.Column("responded", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("wall_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rounds"),
        sa.UniqueConstraint("run_id", "number", name="uq_rounds_run_id_number"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_rounds_run_id_runs",
                                ondelete="CASCADE"),
    )
    op.create_table(
        "round_participation",
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("device_index", sa.Integer(), nullable=False),
        sa.Column("dp_sample_rate", sa.Float(), nullable=True),
        sa.Column("dp_noise_multiplier", sa.Float(), nullable=True),
        sa.Column("dp_steps", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("round_id", "device_id", name="pk_round_participation"),
        sa.ForeignKeyConstraint(["round_id"], ["rounds.id"],
                                name="fk_round_participation_round_id_rounds", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_round_participation_device_id_devices"),
    )
    op.create_index("ix_round_participation_device_id", "round_participation", ["device_id"])
    for statement in _APPEND_ONLY.get(op.get_bind().dialect.name, []):
        op.execute(statement)


def downgrade() -> None:
    for statement in _DROP_APPEND_ONLY.get(op.get_bind().dialect.name, []):
        op.execute(statement)
    op.drop_table("round_participation")
    op.drop_table("rounds")
    op.drop_table("audit_log")
    op.drop_table("runs")
    op.drop_index("ix_devices_data_source_device_index", table_name="devices")
    op.drop_table("devices")
