"""The fleet registry: devices, their keys and budget caps, runs, rounds, the audit log.

Operator-side only (SQLAlchemy + Alembic): nothing under `fl_client` or `privacy` imports
it, so a device build never needs a database driver.

Storage (`db`, `models`), lookups (`devices`) and the audit log (`audit`) live here; the
services that change the fleet (`fl_server.enrollment`, `fl_server.revocation`, the
ledgers) sit above the registry and import it, never the other way round.
"""
