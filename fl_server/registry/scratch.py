"""A throw-away registry database: for tests, benchmarks and load scenarios.

`scratch_registry("sqlite")` is a fresh SQLite file; `scratch_registry("postgresql",
server_url)` is a fresh schema on that PostgreSQL database, with the URL pinning
`search_path` to it, so that nothing else in the database is seen or touched. Either is
removed, with everything in it, when the block ends.
"""

from __future__ import annotations

import contextlib
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text

from fl_server.registry.db import dispose_engines


@contextlib.contextmanager
def scratch_registry(backend: str, postgres_url: str = "", directory: Path | None = None,
                     prefix: str = "fedmsr_scratch") -> Iterator[str]:
    """An empty registry URL (no schema yet: `fedmsr db upgrade` / `db.upgrade` makes it)."""
    if backend == "sqlite":
        with contextlib.ExitStack() as stack:
            where = directory or Path(stack.enter_context(tempfile.TemporaryDirectory()))
            try:
                yield f"sqlite:///{where / 'registry.db'}"
            finally:
                dispose_engines()
        return
    if backend != "postgresql":
        raise ValueError(f"backend must be sqlite or postgresql, got {backend!r}")
    schema = f"{prefix}_{secrets.token_hex(6)}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    finally:
        dispose_engines()
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
