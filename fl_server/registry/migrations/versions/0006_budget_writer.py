"""The runtime moves a device's cached RDP vector only through one function, and only up.

Revision 0004 tied ``device_budgets`` to its event rows (the count must match, and the
vector may change only together with new rows), but whoever could UPDATE the table could
still write any vector in such an UPDATE, lower ones included, so the runtime role had to
hold UPDATE on the cache. On PostgreSQL this revision

* adds to the trigger of 0004 an elementwise check: a new vector must not be below the old
  one at any order (a release never lowers a device's RDP; a relative slack of 1e-9 absorbs
  the last-bit differences of summing the same rows in another order), and must hold no NaN;
* adds ``fedmsr_record_budget(device, rdp, orders_sha256, events, at)``: a SECURITY DEFINER
  function, owned by whoever runs the migration, that inserts or updates one device's row
  (the triggers still apply). The runtime role is granted EXECUTE on it and no INSERT or
  UPDATE on ``device_budgets`` at all (``fedmsr db grants ROLE`` prints the whole grant set);
  EXECUTE is revoked from PUBLIC. Its ``search_path`` is pinned to the schema it was created
  in (then ``pg_temp``), so a caller cannot redirect it to tables of their own.

Whether a new vector is the *right* one SQL still cannot say (RDP of a sampled Gaussian is
not SQL); enforcement recomputes every device's vector from its rows before charging it.
SQLite has no roles: there the database file's permissions are the boundary and 0004's
triggers are the check.

Revision ID: 0006_budget_writer
Revises: 0005_bundles
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_budget_writer"
down_revision = "0005_bundles"
branch_labels = None
depends_on = None

_ROWS = "(SELECT count(*) FROM privacy_events WHERE device_id = NEW.device_id)"
_TIED = "device_budgets: the RDP vector changes only together with new privacy_events rows"
_COUNT = "device_budgets.events must equal the number of the device privacy_events rows"
_UP = "device_budgets: a new RDP vector must not be below the old one at any order"

#: float64 little-endian element `i` of a bytea (the cache's encoding, `privacy_ledger._encode`).
#: PostgreSQL has no bytea -> float8 cast; the IEEE 754 fields are assembled by hand.
_F8LE = """
CREATE FUNCTION fedmsr_f8le(b bytea, i integer) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
  hi bigint := (get_byte(b, i * 8 + 7)::bigint << 24) | (get_byte(b, i * 8 + 6)::bigint << 16)
             | (get_byte(b, i * 8 + 5)::bigint << 8) | get_byte(b, i * 8 + 4)::bigint;
  lo bigint := (get_byte(b, i * 8 + 3)::bigint << 24) | (get_byte(b, i * 8 + 2)::bigint << 16)
             | (get_byte(b, i * 8 + 1)::bigint << 8) | get_byte(b, i * 8)::bigint;
  sign double precision := CASE WHEN hi >= 2147483648 THEN -1 ELSE 1 END;
  e integer := ((hi >> 20) & 2047)::integer;
  m double precision := (hi & 1048575)::double precision * 4294967296.0 + lo::double precision;
BEGIN
  IF e = 2047 THEN
    RETURN CASE WHEN m = 0 THEN sign * 'Infinity'::double precision ELSE 'NaN' END;
  ELSIF e = 0 THEN
    RETURN sign * m * power(2::double precision, -1074);
  END IF;
  RETURN sign * (1 + m / 4503599627370496.0) * power(2::double precision, e - 1023);
END $$
"""

_TRIGGER_0004 = (
    "CREATE OR REPLACE FUNCTION device_budgets_tied_to_events() RETURNS trigger AS $$ BEGIN "
    "IF TG_OP = 'UPDATE' AND (NEW.orders_sha256 IS DISTINCT FROM OLD.orders_sha256 OR "
    "(NEW.events <= OLD.events AND NEW.rdp IS DISTINCT FROM OLD.rdp)) THEN "
    f"RAISE EXCEPTION '{_TIED}'; END IF; "
    f"IF NEW.events <> {_ROWS} THEN RAISE EXCEPTION '{_COUNT}'; END IF; "
    "RETURN NEW; END $$ LANGUAGE plpgsql")

_TRIGGER_0006 = f"""
CREATE OR REPLACE FUNCTION device_budgets_tied_to_events() RETURNS trigger AS $$
DECLARE
  n integer := length(NEW.rdp) / 8;
  new_value double precision;
  old_value double precision;
BEGIN
  IF TG_OP = 'UPDATE' AND (NEW.orders_sha256 IS DISTINCT FROM OLD.orders_sha256 OR
      (NEW.events <= OLD.events AND NEW.rdp IS DISTINCT FROM OLD.rdp)) THEN
    RAISE EXCEPTION '{_TIED}';
  END IF;
  IF NEW.events <> {_ROWS} THEN RAISE EXCEPTION '{_COUNT}'; END IF;
  IF length(NEW.rdp) % 8 <> 0 OR (TG_OP = 'UPDATE' AND length(NEW.rdp) <> length(OLD.rdp)) THEN
    RAISE EXCEPTION '{_UP}';
  END IF;
  FOR i IN 0 .. n - 1 LOOP
    new_value := fedmsr_f8le(NEW.rdp, i);
    IF new_value = 'NaN' OR new_value < 0 THEN RAISE EXCEPTION '{_UP}'; END IF;
    IF TG_OP = 'UPDATE' THEN
      old_value := fedmsr_f8le(OLD.rdp, i);
      -- (PostgreSQL orders NaN above every number, so infinity is handled apart)
      IF (old_value = 'Infinity' AND new_value <> 'Infinity') OR (old_value < 'Infinity'
          AND new_value < old_value - 1e-9 * greatest(1, abs(old_value))) THEN
        RAISE EXCEPTION '{_UP}';
      END IF;
    END IF;
  END LOOP;
  RETURN NEW;
END $$ LANGUAGE plpgsql
"""

_SIGNATURE = "fedmsr_record_budget(integer, bytea, varchar, integer, timestamptz)"


def _writer(schema: str) -> str:
    quoted = '"' + schema.replace('"', '""') + '"'
    return f"""
CREATE FUNCTION fedmsr_record_budget(p_device integer, p_rdp bytea, p_orders varchar,
                                     p_events integer, p_at timestamptz) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = {quoted}, pg_temp AS $$
  INSERT INTO device_budgets (device_id, rdp, orders_sha256, events, updated_at)
  VALUES (p_device, p_rdp, p_orders, p_events, p_at)
  ON CONFLICT (device_id) DO UPDATE
  SET rdp = EXCLUDED.rdp, orders_sha256 = EXCLUDED.orders_sha256,
      events = EXCLUDED.events, updated_at = EXCLUDED.updated_at
$$
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar_one()
    op.execute(_F8LE)
    op.execute(_TRIGGER_0006)
    op.execute(_writer(schema))
    op.execute(f"REVOKE ALL ON FUNCTION {_SIGNATURE} FROM PUBLIC")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP FUNCTION {_SIGNATURE}")
    op.execute(_TRIGGER_0004)
    op.execute("DROP FUNCTION fedmsr_f8le(bytea, integer)")
