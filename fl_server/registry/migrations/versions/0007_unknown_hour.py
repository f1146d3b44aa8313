"""A stored representation's capture hour may be unknown.

Footage whose manifest gives only a `day` (no `hour`, no `captured_at`) has no hour of
capture: the device uploads it as unknown, and the row keeps NULL rather than a made-up
hour that would feed a false routine signal to the leakage tracker.

Revision ID: 0007_unknown_hour
Revises: 0006_budget_writer
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_unknown_hour"
down_revision = "0006_budget_writer"
branch_labels = None
depends_on = None

_KNOWN = "captured_hour >= 0 AND captured_hour <= 23"
_KNOWN_OR_NULL = f"captured_hour IS NULL OR ({_KNOWN})"


def upgrade() -> None:
    with op.batch_alter_table("representations") as batch:
        batch.drop_constraint("ck_representations_captured_hour", type_="check")
        batch.alter_column("captured_hour", existing_type=sa.Integer(), nullable=True)
        batch.create_check_constraint("captured_hour", _KNOWN_OR_NULL)


def downgrade() -> None:
    # Rows of unknown hour cannot be kept under the older rule: refuse rather than invent.
    bind = op.get_bind()
    unknown = bind.execute(sa.text(
        "SELECT count(*) FROM representations WHERE captured_hour IS NULL")).scalar()
    if unknown:
        raise RuntimeError(f"{unknown} stored representation(s) have no capture hour; erase "
                           "them before downgrading below 0007_unknown_hour")
    with op.batch_alter_table("representations") as batch:
        batch.drop_constraint("ck_representations_captured_hour", type_="check")
        batch.alter_column("captured_hour", existing_type=sa.Integer(), nullable=False)
        batch.create_check_constraint("captured_hour", _KNOWN)
