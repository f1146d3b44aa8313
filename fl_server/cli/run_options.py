"""`fedmsr run`'s options, generated from :class:`~fl_server.config.RunConfig`.

A RunConfig field that carries a :class:`~fl_server.config.RunOption` is an option of
`fedmsr run`, with the field's type and default, so a setting is defined once: in
RunConfig. Five options belong to the command alone: ``--dp`` (sets ``dp_sgd`` and
``central_dp`` together), ``--resume``, ``--superlink``, ``--config`` (a TOML file of
option values, fl_server/cli/run_file.py) and ``--dry-run``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
import typer
from click.core import ParameterSource

from fl_server.cli.help import PanelledCommand
from fl_server.config import (
    DP_MODES,
    PANEL_DEPLOYMENT,
    PANEL_DP,
    PANEL_FEDERATION,
    PANEL_OTHER,
    RUN_OPTION,
    RUN_PANELS,
    ConfigError,
    RunConfig,
    RunOption,
)

#: The command's own options (parameter names), listed before the generated ones.
DP, RESUME, SUPERLINK, CONFIG, DRY_RUN = "dp", "resume", "superlink", "config", "dry_run"
#: Options that may go with --resume: where to find the run.
_RESUME_MAY_GIVE = frozenset({RESUME, SUPERLINK, "runs_dir"})


class RunCommand(PanelledCommand):
    """`fedmsr run`: its options listed by panel (`RunOption.panel`), deprecated ones last."""

    panel_order = RUN_PANELS


def _run_option(f: dataclasses.Field[Any]) -> RunOption:
    return f.metadata[RUN_OPTION]


_OPTION_FIELDS = tuple(f for f in dataclasses.fields(RunConfig) if RUN_OPTION in f.metadata)
#: RunConfig field -> the `fedmsr run` option that sets it.
_OPTION_OF_FIELD = {f.name: _run_option(f).name_for(f.name) for f in _OPTION_FIELDS}
#: Parameter name -> option name, for every `fedmsr run` option.
OPTION_NAMES = {**_OPTION_OF_FIELD, DP: "--dp", RESUME: "--resume", SUPERLINK: "--superlink",
                CONFIG: "--config", DRY_RUN: "--dry-run"}


def run_parameters() -> inspect.Signature:
    """The signature Typer reads `fedmsr run`'s options from."""
    hints = typing.get_type_hints(RunConfig)
    params = [  # the command's own options first: --dp heads its panel
        _keyword(DP, str, RunConfig().dp_mode,
                 "none | local (DP-SGD on devices) | central (DP-FedAvg, server noise) | both "
                 "(docs/privacy-accounting.md).", PANEL_DP),
        _keyword(RESUME, str | None, None, "Continue the run with this id.", PANEL_FEDERATION),
        _keyword(SUPERLINK, str | None, None,
                 "Run on Flower's deployment engine: HOST:PORT of a running `fedmsr superlink "
                 "start` whose enrolled devices' SuperNodes train (default: simulation).",
                 PANEL_DEPLOYMENT),
        _keyword(CONFIG, str | None, None,
                 "TOML file of option values (keys: option names without '--'); options "
                 "given on the command line override it (docs/running.md).", PANEL_FEDERATION),
        _keyword(DRY_RUN, bool, False,
                 "Print each device's planned epsilon for the run against its cap, and "
                 "start and write nothing.", PANEL_DP),
    ]
    for f in _OPTION_FIELDS:
        opt = _run_option(f)
        default = opt.unset if f.default is None else f.default
        params.append(_keyword(f.name, _without_none(hints[f.name]), default, opt.help,
                               opt.panel))
    return inspect.Signature(params, return_annotation=None)


def _keyword(name: str, annotation: Any, default: Any, help_text: str,
             panel: str = PANEL_OTHER) -> inspect.Parameter:
    option = typer.Option(default, OPTION_NAMES[name], help=help_text, rich_help_panel=panel)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=annotation)


def _without_none(hint: Any) -> Any:
    """`float | None` -> float: the command line spells None as the option's `unset`."""
    if isinstance(hint, types.UnionType):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return hint


def config_from_options(values: Mapping[str, Any]) -> RunConfig:
    """The options' values -> a validated RunConfig. `--dp-sgd` is the old spelling of
    `--dp local`; an option at its `unset` value leaves the field None. The central noise
    is not calibrated yet (`--target-epsilon`): that loads dp_accounting, so it waits
    until the cheap checks have passed."""
    dp = values[DP]
    if dp not in DP_MODES:
        raise ConfigError("--dp", f"must be one of {', '.join(DP_MODES)}, got {dp!r}")
    if values["dp_sgd"] and dp not in ("none", "local"):
        raise ConfigError("--dp-sgd", f"--dp-sgd means --dp local; with --dp {dp} drop it "
                          "(--dp both is local DP-SGD plus central DP)")
    mode = "local" if values["dp_sgd"] else dp
    settings: dict[str, Any] = {}
    for f in _OPTION_FIELDS:
        value, unset = values[f.name], _run_option(f).unset
        settings[f.name] = None if unset is not None and value == unset else value
    settings.update(dp_sgd=mode in ("local", "both"), central_dp=mode in ("central", "both"))
    if settings["eval_dataset"]:
        settings["eval_dataset"] = str(Path(settings["eval_dataset"]).expanduser().resolve())
    if settings["dataset"]:
        _follow_the_manifest(settings)
    with options_named():
        return RunConfig(**settings).validate()


@contextlib.contextmanager
def options_named() -> Iterator[None]:
    """A ConfigError about a field `fedmsr run` has an option for names that option."""
    try:
        yield
    except ConfigError as exc:
        if exc.field_name not in _OPTION_OF_FIELD:
            raise
        raise ConfigError(_OPTION_OF_FIELD[exc.field_name], exc.problem) from None


def given_with_resume(ctx: click.Context) -> list[str]:
    """The run options the command line set beside --resume (a resumed run keeps its saved
    configuration, so each is a mistake), by option name."""
    return sorted(option for name, option in OPTION_NAMES.items()
                  if name not in _RESUME_MAY_GIVE
                  and ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None))


def _follow_the_manifest(settings: dict[str, Any]) -> None:
    """A --dataset run: the manifests' paths made absolute (the engine's workers run
    elsewhere), one device per manifest device unless --devices says otherwise (then the
    validation names the mismatch), self-supervised unless a --utility-label is given."""
    from privacy.footage_manifest import ManifestError, read_manifest

    defaults = RunConfig()
    settings["dataset"] = str(Path(settings["dataset"]).expanduser().resolve())
    if settings["devices"] == defaults.devices:
        try:
            settings["devices"] = len(read_manifest(settings["dataset"]).devices())
        except ManifestError as exc:
            raise ConfigError("--dataset", str(exc)) from None
    if not settings["utility_label"] and settings["utility"] == defaults.utility:
        settings["utility"] = "ssl"
