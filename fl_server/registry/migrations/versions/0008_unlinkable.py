"""Unlinkable representations: rows collected through the shuffler, with no device.

A separate table rather than a nullable `device_id` on `representations`: every reader of
that table (the leakage tracker, erase, the per-device views) groups by device, and a row
that cannot be grouped must not be pooled with rows that can. No foreign key, no clip id,
no hour; the capture day only as the first day of a window of `granularity_days`.

Revision ID: 0008_unlinkable
Revises: 0007_unknown_hour
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_unlinkable"
down_revision = "0007_unknown_hour"
branch_labels = None
depends_on = None

_TABLE = "unlinkable_representations"


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("collection_round", sa.Integer(), nullable=False),
        sa.Column("pseudonym", sa.String(32), nullable=False),
        sa.Column("window_day", sa.Integer(), nullable=True),
        sa.Column("granularity_days", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("payload_version", sa.Integer(), nullable=False),
        sa.Column("encoder_version", sa.String(64), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=f"pk_{_TABLE}"),
        sa.UniqueConstraint("run_id", "collection_round", "pseudonym",
                            name=f"uq_{_TABLE}_run_id_collection_round_pseudonym"),
        sa.CheckConstraint("collection_round >= 1", name=f"ck_{_TABLE}_collection_round"),
        sa.CheckConstraint("window_day IS NULL OR window_day >= 0",
                           name=f"ck_{_TABLE}_window_day"),
        sa.CheckConstraint("granularity_days >= 0", name=f"ck_{_TABLE}_granularity_days"),
        sa.CheckConstraint("payload_version >= 1", name=f"ck_{_TABLE}_payload_version"),
    )
    op.create_index(f"ix_{_TABLE}_encoder_version_run_id", _TABLE,
                    ["encoder_version", "run_id"])


def downgrade() -> None:
    # These rows have no device to move back to `representations`: refuse to drop data.
    unlinkable = op.get_bind().execute(sa.text(f"SELECT count(*) FROM {_TABLE}")).scalar()
    if unlinkable:
        raise RuntimeError(f"{unlinkable} unlinkable representation(s) are stored; delete "
                           f"them before downgrading below 0008_unlinkable")
    op.drop_index(f"ix_{_TABLE}_encoder_version_run_id", table_name=_TABLE)
    op.drop_table(_TABLE)
