"""Representations, the append-only information ledger, and the fleet's leakage reports.

Revision ID: 0003_representations
Revises: 0002_privacy_ledger
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_representations"
down_revision = "0002_privacy_ledger"
branch_labels = None
depends_on = None

_TZ = sa.DateTime(timezone=True)

#: The information ledger is append-only at the database level, whoever connects to it.
_APPEND_ONLY = {
    "sqlite": [
        f"CREATE TRIGGER information_ledger_no_{verb.lower()} BEFORE {verb} ON "
        f"information_ledger BEGIN SELECT RAISE(ABORT, 'information_ledger is append-only'); "
        f"END"
        for verb in ("UPDATE", "DELETE")
    ],
    "postgresql": [
        ("CREATE FUNCTION information_ledger_append_only() RETURNS trigger AS $$ BEGIN "
         "RAISE EXCEPTION 'information_ledger is append-only'; END $$ LANGUAGE plpgsql"),
        ("CREATE TRIGGER information_ledger_append_only BEFORE UPDATE OR DELETE ON "
         "information_ledger FOR EACH ROW EXECUTE FUNCTION information_ledger_append_only()"),
        ("CREATE TRIGGER information_ledger_no_truncate BEFORE TRUNCATE ON information_ledger "
         "FOR EACH STATEMENT EXECUTE FUNCTION information_ledger_append_only()"),
    ],
}
_DROP_APPEND_ONLY = {
    "sqlite": ["DROP TRIGGER information_ledger_no_update",
               "DROP TRIGGER information_ledger_no_delete"],
    "postgresql": ["DROP TRIGGER information_ledger_no_truncate ON information_ledger",
                   "DROP TRIGGER information_ledger_append_only ON information_ledger",
                   "DROP FUNCTION information_ledger_append_only()"],
}


def upgrade() -> None:
    op.create_table(
        "representations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("collection_round", sa.Integer(), nullable=False),
        sa.Column("clip_id", sa.String(64), nullable=False),
        sa.Column("captured_day", sa.Integer(), nullable=False),
        sa.Column("captured_hour", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("payload_version", sa.Integer(), nullable=False),
        sa.Column("encoder_version", sa.String(64), nullable=False),
        sa.Column("stored_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_representations"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_representations_device_id_devices"),
        sa.UniqueConstraint("device_id", "run_id", "collection_round", "clip_id",
                            name="uq_representations_device_id_run_id_collection_round_clip_id"),
        sa.CheckConstraint("collection_round >= 1", name="ck_representations_collection_round"),
        sa.CheckConstraint("captured_day >= 0", name="ck_representations_captured_day"),
        sa.CheckConstraint("captured_hour >= 0 AND captured_hour <= 23",
                           name="ck_representations_captured_hour"),
        sa.CheckConstraint("payload_version >= 1", name="ck_representations_payload_version"),
    )
    op.create_index("ix_representations_encoder_version_device_id", "representations",
                    ["encoder_version", "device_id"])
    op.create_table(
        "information_ledger",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("collection_round", sa.Integer(), nullable=False),
        sa.Column("encoder_version", sa.String(64), nullable=False),
        sa.Column("requested", sa.Integer(), nullable=False),
        sa.Column("clips", sa.Integer(), nullable=False),
        sa.Column("bits", sa.BigInteger(), nullable=False),
        sa.Column("device_bits_before", sa.BigInteger(), nullable=False),
        sa.Column("capped", sa.Boolean(), nullable=False),
        sa.Column("cap_bits", sa.Float(), nullable=True),
        sa.Column("recorded_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_information_ledger"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_information_ledger_device_id_devices"),
        sa.UniqueConstraint("device_id", "run_id", "collection_round",
                            name="uq_information_ledger_device_id_run_id_collection_round"),
        sa.CheckConstraint("collection_round >= 1",
                           name="ck_information_ledger_collection_round"),
        sa.CheckConstraint("requested >= 1", name="ck_information_ledger_requested"),
        sa.CheckConstraint("clips >= 0 AND clips <= requested", name="ck_information_ledger_clips"),
        sa.CheckConstraint("bits >= 0", name="ck_information_ledger_bits"),
        sa.CheckConstraint("device_bits_before >= 0",
                           name="ck_information_ledger_device_bits_before"),
    )
    op.create_index("ix_information_ledger_device_id", "information_ledger", ["device_id"])
    op.create_table(
        "leakage_reports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("collection_round", sa.Integer(), nullable=False),
        sa.Column("encoder_version", sa.String(64), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("clips", sa.Integer(), nullable=False),
        sa.Column("max_gain", sa.Float(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_leakage_reports"),
        sa.UniqueConstraint("run_id", "collection_round",
                            name="uq_leakage_reports_run_id_collection_round"),
    )
    for statement in _APPEND_ONLY.get(op.get_bind().dialect.name, []):
        op.execute(statement)


def downgrade() -> None:
    for statement in _DROP_APPEND_ONLY.get(op.get_bind().dialect.name, []):
        op.execute(statement)
    op.drop_table("leakage_reports")
    op.drop_index("ix_information_ledger_device_id", table_name="information_ledger")
    op.drop_table("information_ledger")
    op.drop_index("ix_representations_encoder_version_device_id", table_name="representations")
    op.drop_table("representations")
