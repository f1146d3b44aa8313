"""The fleet registry: devices, their keys and budget caps, runs, rounds, the audit log.

Operator-side only (SQLAlchemy + Alembic): nothing under `fl_client` or `privacy` imports
it, so a device build never needs a database driver.
"""
