"""`fedmsr run --config FILE`: option values from a TOML file, the command line on top.

A key is an option's name without its dashes (``batch-size = 8``, ``lr = 0.001``,
``dp = "local"``, ``epsilon-cap = 4.0``), so a file reads like the command line it
replaces; a value has the option's type (TOML integer for an integer option, integer or
float for a number, true/false for a switch, a string for text). RunConfig's field names
(``learning_rate``) are not a second spelling: they would make two keys mean one setting.
An unknown key is refused, with the nearest option name when there is one, since a
misspelt key silently left at its default is a run with the wrong settings.

An option the command line sets (click's ParameterSource: anything but the default) wins
over the file. ``resume``, ``config`` and ``dry-run`` are what a command does with a
file, not settings, and cannot be in it.
"""

from __future__ import annotations

import contextlib
import difflib
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import click
from click.core import ParameterSource

from fl_server.cli.run_options import CONFIG, DRY_RUN, OPTION_NAMES, RESUME
from fl_server.config import ConfigError

#: Options that say what to do with a configuration, not what it is.
_NOT_IN_FILE = frozenset({CONFIG, DRY_RUN, RESUME})
#: File key -> parameter name.
_PARAM_OF_KEY = {flag.removeprefix("--"): name for name, flag in OPTION_NAMES.items()
                 if name not in _NOT_IN_FILE}


@dataclass(frozen=True)
class FileSettings:
    """The options' values with the file's applied, and which of them came from it."""

    values: dict[str, Any]
    path: str = ""
    from_file: frozenset[str] = frozenset()  # option names (``--batch-size``)


def with_config_file(ctx: click.Context, values: Mapping[str, Any]) -> FileSettings:
    """`values` with every option the command line left at its default taken from the
    `--config` file (unchanged without one)."""
    path = values.get(CONFIG)
    if path is None:
        return FileSettings(dict(values))
    params = {p.name: p for p in ctx.command.params if p.name}
    merged, taken = dict(values), set()
    for key, value in _read(path).items():
        name = _param_of(path, key)
        checked = _typed(path, key, value, params[name].type)
        if ctx.get_parameter_source(name) in (ParameterSource.DEFAULT, None):
            merged[name] = checked
            taken.add(OPTION_NAMES[name])
    return FileSettings(merged, path, frozenset(taken))


@contextlib.contextmanager
def file_named(settings: FileSettings) -> Iterator[None]:
    """An error about an option whose value came from the file says so."""
    try:
        yield
    except ConfigError as exc:
        if exc.field_name not in settings.from_file:
            raise
        raise ConfigError(exc.field_name,
                          f"{exc.problem} (set in --config {settings.path})") from None


def _read(path: str) -> dict[str, Any]:
    where = f"--config {path}"
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(where, "no such file") from None
    except IsADirectoryError:
        raise ConfigError(where, "is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(where, f"cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(where, "is not UTF-8 text (TOML)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, f"is not valid TOML: {exc}") from None


def _param_of(path: str, key: str) -> str:
    where = f"--config {path}"
    if key in _PARAM_OF_KEY:
        return _PARAM_OF_KEY[key]
    if key.removeprefix("--") in _PARAM_OF_KEY:
        raise ConfigError(where, f"key {key!r}: write option names without dashes "
                          f"({key.removeprefix('--')!r})")
    if key in {OPTION_NAMES[n].removeprefix("--") for n in _NOT_IN_FILE}:
        raise ConfigError(where, f"key {key!r} is not a setting: give --{key} on the "
                          "command line")
    raise ConfigError(where, f"unknown key {key!r}{_suggestion(key)}")


def _suggestion(key: str) -> str:
    """`` (did you mean 'batch-size'?)`` for the closest option name, or nothing."""
    spelled = key.replace("_", "-")
    by_field = OPTION_NAMES.get(key.replace("-", "_"), "").removeprefix("--")
    if by_field in _PARAM_OF_KEY:  # a RunConfig field name whose option is named otherwise
        return f" (did you mean {by_field!r}?)"
    close = difflib.get_close_matches(spelled, list(_PARAM_OF_KEY), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _typed(path: str, key: str, value: object, kind: click.ParamType) -> Any:
    """The value, if it has the option's type (an integer is a valid float)."""
    if isinstance(kind, click.types.BoolParamType):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(kind, click.types.IntParamType):
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(kind, click.types.FloatParamType):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        expected = "a number"
        value = float(value) if ok else value  # type: ignore[arg-type]
    else:
        ok, expected = isinstance(value, str), "a string"
    if not ok:
        raise ConfigError(f"--config {path}", f"key {key!r} must be {expected}, got "
                          f"{_toml_kind(value)} ({value!r})")
    return value


def _toml_kind(value: object) -> str:
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
             (list, "an array"), (dict, "a table"))
    return next((name for t, name in kinds if isinstance(value, t)), "a date or time")
