"""The privacy ledger accepts a third kind of release: ``randomized-release``.

A device's upload of representations through the Gaussian mechanism
(``privacy.release_mechanism``) is charged to the same per-device (epsilon, delta) ledger
as DP-SGD and DP-FedAvg, so ``privacy_events.kind`` may now name it. Nothing else of the
table changes; its append-only rules stay.

On SQLite a CHECK constraint can only change by rebuilding the table (Alembic's batch
mode). A rebuilt table loses its own triggers, and SQLite refuses the rebuild while other
triggers name the table (those of ``device_budgets``, revision 0004): every trigger that
names ``privacy_events`` is dropped first and created again, as the database held it,
right after, in the same transaction, so the committed schema is never without them.

Revision ID: 0009_randomized_release
Revises: 0008_unlinkable
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_randomized_release"
down_revision = "0008_unlinkable"
branch_labels = None
depends_on = None

_OLD_KINDS = ("local-dp-sgd", "central-dp-fedavg")
_NEW_KINDS = (*_OLD_KINDS, "randomized-release")
#: Revision 0002's append-only rules on SQLite (re-created after the batch rebuild).
_SQLITE_TRIGGERS = ("privacy_events_no_delete", "privacy_events_only_commit")


def _ck(name: str) -> str:
    """A CHECK constraint's name as revision 0002 left it in the database (its explicit
    names went through the naming convention once more), kept so the schema stays the
    same apart from the kinds."""
    return f"ck_privacy_events_ck_privacy_events_{name}"


def _kinds(kinds: tuple[str, ...]) -> str:
    return f"kind IN ({', '.join(repr(k) for k in kinds)})"


def _sqlite_triggers() -> dict[str, str]:
    """Name -> CREATE statement of every trigger on or naming privacy_events."""
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND (tbl_name = "
        "'privacy_events' OR sql LIKE '%privacy_events%')")).all()
    found = {str(name): str(sql) for name, sql in rows}
    missing = [t for t in _SQLITE_TRIGGERS if t not in found]
    if missing:
        raise RuntimeError(f"privacy_events has no trigger {missing[0]}: this database was "
                           "not made by fedmsr's migrations; refusing to rebuild the ledger")
    return found


def _sqlite_table(kinds: tuple[str, ...]) -> sa.Table:
    """privacy_events as revision 0002 made it, with `kinds`: the rebuild copies into this
    definition (not a reflection, whose constraint names the naming convention would
    prefix a second time)."""
    tz = sa.DateTime(timezone=True)
    return sa.Table(
        "privacy_events", sa.MetaData(),
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("round_number", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("sample_rate", sa.Float(), nullable=False),
        sa.Column("noise_multiplier", sa.Float(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reserved_at", tz, nullable=False),
        sa.Column("committed_at", tz, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_privacy_events"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_privacy_events_device_id_devices"),
        sa.UniqueConstraint("device_id", "run_id", "round_number", "kind",
                            name="uq_privacy_events_device_id_run_id_round_number_kind"),
        sa.CheckConstraint(_kinds(kinds), name=_ck("kind")),
        sa.CheckConstraint("status IN ('reserved', 'committed')",
                           name=_ck("status")),
        sa.CheckConstraint("sample_rate > 0 AND sample_rate <= 1",
                           name=_ck("sample_rate")),
        sa.CheckConstraint("noise_multiplier > 0", name=_ck("noise_multiplier")),
        sa.CheckConstraint("steps >= 1", name=_ck("steps")),
        sa.CheckConstraint("round_number >= 1", name=_ck("round_number")),
        sa.CheckConstraint("(status = 'committed') = (committed_at IS NOT NULL)",
                           name=_ck("committed_at")),
        sa.Index("ix_privacy_events_run_id_round_number", "run_id", "round_number"),
    )


def _set_kinds(kinds: tuple[str, ...]) -> None:
    if op.get_bind().dialect.name == "sqlite":
        triggers = _sqlite_triggers()
        for name in sorted(triggers):
            op.execute(f'DROP TRIGGER "{name}"')
        with op.batch_alter_table("privacy_events", copy_from=_sqlite_table(kinds),
                                  recreate="always"):
            pass
        for name in sorted(triggers):
            op.execute(triggers[name])
        return
    op.drop_constraint(op.f(_ck("kind")), "privacy_events", type_="check")
    op.create_check_constraint(op.f(_ck("kind")), "privacy_events", _kinds(kinds))


def upgrade() -> None:
    _set_kinds(_NEW_KINDS)


def downgrade() -> None:
    # Randomized releases cannot be kept under the older rule, and a ledger row is never
    # deleted: refuse rather than forget a spend.
    released = op.get_bind().execute(sa.text(
        "SELECT count(*) FROM privacy_events WHERE kind = 'randomized-release'")).scalar()
    if released:
        raise RuntimeError(f"{released} privacy ledger row(s) are randomized releases; a "
                           "ledger row is never deleted, so the registry cannot go below "
                           "0009_randomized_release")
    _set_kinds(_OLD_KINDS)
