"""Every generated dashboard against Grafana's published schema.

No Grafana server runs here; instead the dashboards are validated against JSON Schemas
derived mechanically from the npm package `@grafana/schema` (Grafana's own TypeScript
types, the version in each file's `$comment`; `scripts/grafana_schema.sh` regenerates
them): the dashboard model strictly (no property the schema lacks, every type and enum),
and each panel's `options` (and a time series' `fieldConfig.defaults.custom`) against its
panel plugin's types. A panel plugin's `required` list is the shape after Grafana filled
in its defaults, which it does for any option a stored dashboard leaves out, so options
are checked for names and types, not presence.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from monitoring import dashboards

SCHEMA_DIR = dashboards.OUTPUT_DIR.parent / "schema"
BOARDS = sorted(dashboards.OUTPUT_DIR.glob("*.json"))


def _schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


def _without_required(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_required(v) for k, v in node.items() if k != "required"}
    if isinstance(node, list):
        return [_without_required(v) for v in node]
    return node


def _validator(name: str, *, defaults_filled: bool = False) -> jsonschema.Draft7Validator:
    schema = _schema(name)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(_without_required(schema) if defaults_filled else schema)


DASHBOARD = _validator("dashboard")
OPTIONS = {kind: _validator(f"panel-{kind}-options", defaults_filled=True)
           for kind in ("timeseries", "stat", "bargauge")}
TIMESERIES_CUSTOM = _validator("panel-timeseries-fieldconfig", defaults_filled=True)


def _errors(board: dict[str, Any]) -> list[str]:
    found = [f"{list(e.absolute_path)}: {e.message}" for e in DASHBOARD.iter_errors(board)]
    for panel in board.get("panels", []):
        if panel["type"] == "row":
            continue
        where = f"panel {panel.get('title')!r}"
        if panel["type"] not in OPTIONS:
            found.append(f"{where}: no schema for panel type {panel['type']!r}")
            continue
        found += [f"{where} options {list(e.absolute_path)}: {e.message}"
                  for e in OPTIONS[panel["type"]].iter_errors(panel.get("options", {}))]
        if panel["type"] == "timeseries":
            custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
            found += [f"{where} custom {list(e.absolute_path)}: {e.message}"
                      for e in TIMESERIES_CUSTOM.iter_errors(custom)]
    return found


def test_the_schemas_are_grafanas() -> None:
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        comment = json.loads(path.read_text())["$comment"]
        assert "@grafana/schema@" in comment and "scripts/grafana_schema.sh" in comment, path


@pytest.mark.parametrize("path", BOARDS, ids=[p.name for p in BOARDS])
def test_every_dashboard_matches_grafanas_schema(path: Path) -> None:
    errors = _errors(json.loads(path.read_text()))
    assert not errors, "\n".join(errors)


def test_all_four_dashboards_are_checked() -> None:
    assert {p.name for p in BOARDS} == set(dashboards.expected_files())
    assert len(BOARDS) == 4


@pytest.mark.parametrize(("change", "needle"), [
    (lambda b: b.update(style="dark"), "style"),                          # gone from Grafana
    (lambda b: b["templating"]["list"][0].update(refresh=7), "refresh"),  # not an enum value
    (lambda b: b["panels"][1].update(gridPos={"x": 0}), "gridPos"),       # h, w, y missing
    (lambda b: b["panels"][1]["options"].update(colorMode="rainbow"), "colorMode"),
    (lambda b: b.update(refresh=10), "refresh"),                          # a string
])
def test_the_schema_rejects_what_grafana_would_not_load(change, needle: str) -> None:
    """The check has teeth: each broken copy of a valid dashboard fails, naming the field."""
    board = json.loads((dashboards.OUTPUT_DIR / "fedmsr-overview.json").read_text())
    assert not _errors(board)
    broken = copy.deepcopy(board)
    change(broken)
    errors = _errors(broken)
    assert errors and any(needle in e for e in errors), errors
