"""`fedmsr db …`: the registry database's schema (Alembic migrations), at the URL that
`fedmsr --db URL`, else `FEDMSR_DB`, else `sqlite:///fedmsr.db` names."""

from __future__ import annotations

import typer
from rich.console import Console

from fl_server.cli.errors import fail
from fl_server.registry import db
from fl_server.registry.runtime_role import grant_statements

console = Console(soft_wrap=True)  # no wrapping: output is read by scripts too
db_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                     help="The registry database (schema migrations).")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the registry schema (idempotent).

    The schema is brought to this fedmsr's revision; nothing happens when it is there.
    """
    url = db.resolve_url()
    before, after = db.upgrade(url)
    state = "already at" if before == after else f"upgraded from {before or 'empty'} to"
    console.print(f"registry {db.redacted(url)}: {state} {after}", highlight=False)


@db_app.command("current")
def db_current() -> None:
    """Print the registry's schema revision (`none`: empty database)."""
    print(db.current_revision(db.resolve_url()) or "none")


@db_app.command("grants")
def db_grants(
    role: str = typer.Argument(..., help="The PostgreSQL role `fedmsr run` connects as."),
    schema: str = typer.Option("public", help="The schema `fedmsr db upgrade` created."),
) -> None:
    """Print the GRANT statements for a run's PostgreSQL role.

    The role a run should use owns nothing, holds no UPDATE on the cached spend, and can
    append to the ledgers only."""
    try:
        statements = grant_statements(role, schema)
    except ValueError as e:
        fail("ROLE" if "role" in str(e).split()[0] else "--schema", str(e))
    print(";\n".join(statements) + ";")
