"""Alembic environment, configured in code (see `fl_server.registry.db.alembic_config`).

Online mode only: the caller hands over an open connection in `config.attributes`, so
migrations run inside the caller's transaction and no alembic.ini is needed at run time.
"""

from __future__ import annotations

from alembic import context

from fl_server.registry.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("fedmsr migrations run through `fedmsr db upgrade` "
                       "(fl_server.registry.db.upgrade), which supplies the connection")

context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
