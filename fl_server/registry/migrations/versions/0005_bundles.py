"""Where each device's enrollment bundle was written (`fedmsr fleet enroll --bundles-dir`).

A registry-backed simulation signs its check-ins with the simulated devices' own bundles;
it must use the bundles the registry enrolled, wherever they were written, not whatever
`./devices` holds. Devices enrolled before this revision have no recorded directory (the
run then falls back to `./devices`).

Revision ID: 0005_bundles
Revises: 0003_representations
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_bundles"
down_revision = "0004_ledger_integrity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("bundle_dir", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("bundle_dir")
