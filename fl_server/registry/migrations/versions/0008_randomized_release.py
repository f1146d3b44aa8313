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

Revision ID: 0008_randomized_release
Revises: 0007_unknown_hour
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_randomized_release"
down_revision = "0007_unknown_hour"
branch_labels = None
depends_on = None

_OLD_KINDS = ("local-dp-sgd", "central-dp-fedavg")
_NEW_KINDS = (*_OLD_KINDS, "randomized-release")
#: Revision 0002's append-only rules on SQLite (re-created after the batch rebuild).
_SQLITE_TRIGGERS = ("privacy_events_no_delete", "privacy_events_only_commit")


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


def _set_kinds(kinds: tuple[str, ...]) -> None:
    if op.get_bind().dialect.name == "sqlite":
        triggers = _sqlite_triggers()
        for name in sorted(triggers):
            op.execute(f'DROP TRIGGER "{name}"')
        with op.batch_alter_table("privacy_events", recreate="always") as batch:
            batch.drop_constraint("ck_privacy_events_kind", type_="check")
            batch.create_check_constraint("kind", _kinds(kinds))
        for name in sorted(triggers):
            op.execute(triggers[name])
        return
    op.drop_constraint("ck_privacy_events_kind", "privacy_events", type_="check")
    op.create_check_constraint("kind", "privacy_events", _kinds(kinds))


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
                           "0008_randomized_release")
    _set_kinds(_OLD_KINDS)
