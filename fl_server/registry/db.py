"""Where the registry lives and how to reach it: URL resolution, engine, sessions, schema.

The URL comes from `fedmsr --db URL`, else the `FEDMSR_DB` environment variable, else
the embedded default `sqlite:///fedmsr.db` in the working directory. The `--db` flag is
stored in `FEDMSR_DB` by the CLI (`use_flag_url`), so the engine subprocess of `fedmsr
run` (and every sink in it) reaches the same database. PostgreSQL works via psycopg 3:
`postgres://` and `postgresql://` (the spellings other tools print) mean
`postgresql+psycopg://`. An error about the URL names where it came from: `--db`, or
`FEDMSR_DB` when the variable set it.

Every failure to reach or use the database becomes a :class:`RegistryError`: one line
naming what is wrong and the fix, never a driver traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

ENV_VAR = "FEDMSR_DB"
DEFAULT_FILE = "fedmsr.db"
MIGRATIONS = Path(__file__).with_name("migrations")
T = TypeVar("T")
#: Values per IN (...) list: far below SQLite's bound variable limit.
IN_CHUNK = 500


class RegistryError(Exception):
    """A registry operation cannot go ahead; the message names the field and the fix."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.field_name = name


#: The URL `fedmsr --db` gave in this process (normalised), to tell it from `FEDMSR_DB`'s.
_flag_url: str | None = None
#: The names URLs give PostgreSQL (SQLAlchemy knows only the second).
_POSTGRES_NAMES = ("postgres", "postgresql")


def resolve_url(flag: str | None = None) -> str:
    """`--db` flag, else `FEDMSR_DB`, else the embedded SQLite file in the working directory."""
    if flag:
        return normalised(flag)
    return normalised(os.environ.get(ENV_VAR) or f"sqlite:///{DEFAULT_FILE}")


def use_flag_url(url: str) -> None:
    """`fedmsr --db URL`: the registry of this process and of every process it starts."""
    global _flag_url
    _flag_url = normalised(url)
    os.environ[ENV_VAR] = _flag_url


def normalised(url: str) -> str:
    """`postgres://` and `postgresql://` -> `postgresql+psycopg://` (psycopg 3, the driver
    fedmsr installs; SQLAlchemy would look for psycopg2 or refuse `postgres`); `postgres+X`
    -> `postgresql+X`. Anything else unchanged."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    backend, plus, driver = scheme.partition("+")
    if backend not in _POSTGRES_NAMES:
        return url
    return f"postgresql+{driver if plus else 'psycopg'}://{rest}"


def url_source(url: str) -> str:
    """Where `url` came from, for an error message: `FEDMSR_DB` when that variable holds
    it and `--db` did not give it, else `--db` (also for the embedded default)."""
    url, from_env = normalised(url), os.environ.get(ENV_VAR)
    if url != _flag_url and from_env and normalised(from_env) == url:
        return ENV_VAR
    return "--db"


def registry_configured() -> bool:
    """Whether an operator set up a registry here (a URL given, or the default file exists)."""
    return bool(os.environ.get(ENV_VAR)) or Path(DEFAULT_FILE).exists()


def redacted(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


_ENGINES: dict[str, Engine] = {}


def get_engine(url: str) -> Engine:
    """One engine per URL in this process (a connection pool is not cheap)."""
    url = normalised(url)
    if url not in _ENGINES:
        _ENGINES[url] = _new_engine(url)
    return _ENGINES[url]


def dispose_engines() -> None:
    """Close every pooled connection this process holds (tests, before dropping a schema)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


def _new_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise RegistryError(url_source(url), f"{url!r} is not a database URL; use e.g. "
                            "sqlite:///fedmsr.db or postgresql+psycopg://user@host/db") from None
    kwargs: dict[str, object] = {}
    if parsed.get_backend_name() == "postgresql":
        # pool_pre_ping: a pooled connection is tested (SELECT 1) before each checkout, so
        # after a database restart the pool reconnects instead of failing the next commit
        # (tests/test_db_outage.py); a database that is still down fails with a clear error.
        kwargs["connect_args"] = {"connect_timeout": 5}
        kwargs["pool_pre_ping"] = True
    elif parsed.get_backend_name() != "sqlite":
        raise RegistryError(url_source(url), f"unsupported database {parsed.get_backend_name()!r}; "
                            "use sqlite:///PATH or postgresql+psycopg://...")
    try:
        engine = create_engine(url, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        raise RegistryError(url_source(url), f"no driver for {redacted(url)} ({exc}); "
                            "use postgresql+psycopg:// (psycopg 3)") from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """SQLite ignores foreign keys unless asked, per connection."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _first_line(exc: BaseException) -> str:
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return detail[0] if detail else type(exc).__name__


def unreachable(url: str, exc: BaseException) -> RegistryError:
    first = _first_line(exc)
    return RegistryError(url_source(url), f"cannot use the registry database {redacted(url)}: "
                         f"{first}; check --db / {ENV_VAR} and that the database server is "
                         "running")


def alembic_config(connection: object | None = None) -> Config:
    """Alembic configured in code: the migrations ship inside the package, no alembic.ini."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def upgrade(url: str) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; return (revision before, revision after)."""
    engine = get_engine(url)
    try:
        with engine.begin() as connection:
            before = MigrationContext.configure(connection).get_current_revision()
            command.upgrade(alembic_config(connection), "head")
    except (DBAPIError, SQLAlchemyError, OSError) as exc:
        raise unreachable(url, exc) from None
    return before, head_revision()


def current_revision(url: str) -> str | None:
    """The schema revision, None for an empty database (a missing SQLite file is not created)."""
    get_engine(url)  # a malformed URL is reported as such, before anything else
    if _missing_sqlite_file(url):
        return None
    try:
        with get_engine(url).connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except (DBAPIError, SQLAlchemyError, OSError) as exc:
        raise unreachable(url, exc) from None


def _missing_sqlite_file(url: str) -> bool:
    parsed = make_url(url)
    path = parsed.database or ""
    return (parsed.get_backend_name() == "sqlite" and path not in ("", ":memory:")
            and not path.startswith("file:") and not Path(path).exists())


def require_schema(url: str) -> None:
    """Refuse to work on a database that `fedmsr db upgrade` has not brought to our revision."""
    get_engine(url)  # a malformed URL is reported as such, before anything else
    current, head = current_revision(url), head_revision()
    if current != head:
        state = "has no fedmsr registry" if current is None else f"is at revision {current}"
        raise RegistryError(url_source(url), f"the registry database {redacted(url)} {state}, this "
                            f"fedmsr expects {head}: run `fedmsr --db URL db upgrade` first")


def in_chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    """`values` in slices of IN_CHUNK, one `IN (...)` list each."""
    for start in range(0, len(values), IN_CHUNK):
        yield values[start:start + IN_CHUNK]


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One transaction: committed on success, rolled back (nothing written) on any error."""
    require_schema(url)
    factory = sessionmaker(get_engine(url), expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise RegistryError("registry", f"the database refused the change (nothing was "
                            f"written): {_first_line(exc)}") from None
    except DBAPIError as exc:
        session.rollback()
        raise unreachable(url, exc) from None
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
