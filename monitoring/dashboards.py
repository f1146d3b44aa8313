"""The Grafana dashboards, built in Python with grafana-foundation-sdk.

`python -m monitoring.dashboards` regenerates `monitoring/grafana/dashboards/*.json`
(committed, so Grafana's file provisioning picks them up without Python); a test
regenerates them and compares byte for byte, so the JSON never drifts from this module.
`--check` exits 1 when the committed files are stale.

Every dashboard has two template variables, `job` (fedmsr-run: live runs; fedmsr-monitor:
`fedmsr monitor` between runs) and `run` (a run's id, the `run` label its Prometheus
target carries; All by default), and every query selects on both through :func:`m`, so a
series is never shown twice (once per job) and runs can be compared side by side. A series
without a `run` label (`fedmsr monitor`'s) matches `run=~".*"`, the All value. Besides
those, queries use only Grafana's `$__rate_interval`; the tests substitute all three and
evaluate every query against a real Prometheus. Every query is fleet-level: no device-id
labels exist to select on.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, common, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import Dashboard, QueryVariable, Row
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableModel,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DATASOURCE = DataSourceRef(type_val="prometheus", uid="fedmsr-prometheus")
OUTPUT_DIR = Path(__file__).parent / "grafana" / "dashboards"
RATE = "$__rate_interval"
#: The template variables every query selects on, and the value `All` stands for.
JOB, RUN, ALL = "$job", "$run", ".*"
#: Metrics only `fedmsr monitor` exports (the fleet registry's own figures): a live run's
#: scrape has no series for them.
MONITOR_ONLY = frozenset({"fedmsr_registry_devices", "fedmsr_registry_release_epsilon_max",
                          "fedmsr_registry_release_epsilon_mean"})


IDENTITY = 'probe="identity"'


def m(metric: str, matchers: str = "") -> str:
    """`metric` selected by the dashboard's `job` and `run` variables (and `matchers`)."""
    extra = f", {matchers}" if matchers else ""
    return f'{metric}{{job=~"{JOB}", run=~"{RUN}"{extra}}}'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    heatmap: bool = False  # `le` buckets, shown as a distribution


@dataclass(frozen=True)
class PanelSpec:
    kind: str  # "timeseries" | "stat" | "bargauge"
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    width: int = 8


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[PanelSpec, ...]], ...]


def _by(*labels: str) -> str:
    """Group by the run (so runs stay apart) and `labels`."""
    return ", ".join(("run", *labels))


def _rate(metric: str, matchers: str = "") -> str:
    return f"rate({m(metric, matchers)}[{RATE}])"


def _increase(metric: str, matchers: str = "") -> str:
    return f"increase({m(metric, matchers)}[{RATE}])"


def _mean(metric: str, *by: str, matchers: str = "") -> str:
    """Mean of a histogram's observations over the rate window (sum / count), per run."""
    group = _by(*by)
    return (f"sum by ({group}) ({_rate(f'{metric}_sum', matchers)}) / "
            f"sum by ({group}) ({_rate(f'{metric}_count', matchers)})")


def _p(q: float, metric: str) -> str:
    return f"histogram_quantile({q}, sum by ({_by('le')}) ({_rate(f'{metric}_bucket')}))"


OVERVIEW = DashboardSpec(
    "fedmsr-overview", "fedmsr / Federation overview",
    "Progress, timing, participation and representation quality of the selected runs.",
    (
        ("Run", (
            PanelSpec("stat", "Run status", "Each run's current status (1 = this one): "
                      "running, completed, failed or budget-exhausted.", "none",
                      (Query(f"{m('fedmsr_run_status')} == 1", "{{run}} {{status}}"),), 6),
            PanelSpec("stat", "Rounds", "Rounds finished of those planned.", "none",
                      (Query(m("fedmsr_run_rounds_completed"), "{{run}} completed"),
                       Query(m("fedmsr_run_rounds_planned"), "{{run}} planned")), 6),
            PanelSpec("stat", "DP-SGD", "1 when devices train with DP-SGD.", "bool_on_off",
                      (Query(m("fedmsr_run_dp_sgd_enabled"), "{{run}} DP-SGD"),), 6),
            PanelSpec("timeseries", "Rounds by outcome", "Cumulative rounds per outcome.",
                      "none", (Query(f"sum by ({_by('status')}) ({m('fedmsr_rounds_total')})",
                                     "{{run}} {{status}}"),), 6),
        )),
        ("Timing", (
            PanelSpec("timeseries", "Round duration", "p50 / p95 of round wall time.", "s",
                      (Query(_p(0.5, "fedmsr_round_duration_seconds"), "{{run}} p50"),
                       Query(_p(0.95, "fedmsr_round_duration_seconds"), "{{run}} p95"))),
            PanelSpec("timeseries", "Phase duration (mean)", "Check-in, train, aggregate, "
                      "evaluate (and secure-aggregation stages once enabled).", "s",
                      (Query(_mean("fedmsr_round_phase_duration_seconds", "phase"),
                             "{{run}} {{phase}}"),)),
            PanelSpec("timeseries", "Device training time", "Slowest device in the last "
                      "round, and device-seconds of training per second.", "s",
                      (Query(m("fedmsr_round_client_train_max_seconds"),
                             "{{run}} slowest device"),
                       Query(_rate("fedmsr_client_train_seconds_total"),
                             "{{run}} device-s per s"))),
        )),
        ("Participation", (
            PanelSpec("timeseries", "Devices in the last round", "Sampled, responded, "
                      "dropped.", "none",
                      (Query(m("fedmsr_round_devices"), "{{run}} {{outcome}}"),)),
            PanelSpec("timeseries", "Dropout ratio", "Dropped / sampled device-rounds.",
                      "percentunit",
                      (Query(f"sum by ({_by()}) ({_rate('fedmsr_devices_dropped_total')}) / "
                             f"sum by ({_by()}) ({_rate('fedmsr_devices_sampled_total')})",
                             "{{run}} dropout"),)),
            PanelSpec("timeseries", "Traffic", "Bytes sent to / received from devices.",
                      "Bps",
                      (Query(_rate("fedmsr_network_sent_bytes_total"), "{{run}} sent"),
                       Query(_rate("fedmsr_network_received_bytes_total"),
                             "{{run}} received"))),
        )),
        ("Representation", (
            PanelSpec("timeseries", "Probe accuracy (DTP / PL)", "Held-out linear probes: "
                      "utility (activity) should rise, identity should stay near chance.",
                      "percentunit",
                      (Query(m("fedmsr_probe_accuracy_ratio"), "{{run}} {{probe}}"),
                       Query(m("fedmsr_probe_chance_accuracy_ratio"),
                             "{{run}} {{probe}} chance"))),
            PanelSpec("timeseries", "KL rate", "Mean KL(q(z|x) || prior) per held-out clip.",
                      "decbits", (Query(f"{m('fedmsr_representation_kl_bytes')} * 8",
                                        "{{run}} bits per clip"),)),
            PanelSpec("timeseries", "Held-out loss", "Server-side VIB loss after each round.",
                      "none", (Query(m("fedmsr_round_loss"), "{{run}} loss"),)),
        )),
    ),
)

BUDGETS = DashboardSpec(
    "fedmsr-budgets", "fedmsr / Privacy budgets",
    "Per-device DP and information budgets, as fleet figures (no device ids). ε spent is "
    "the reported (PLD) figure `fedmsr budget show` prints; the RDP bound (>= it) is what "
    "enforcement checks first, always labelled as such.",
    (
        ("Epsilon", (
            PanelSpec("stat", "Max ε spent", "Largest epsilon any tracked device has spent "
                      "(reported, PLD: the figure fedmsr budget show prints), and the "
                      "largest RDP bound (enforcement's first check, >= the spend).", "none",
                      (Query(m("fedmsr_fleet_epsilon_spent_max"), "{{run}} ε spent (PLD)"),
                       Query(m("fedmsr_fleet_epsilon_rdp_bound_max"),
                             "{{run}} RDP bound (enforcement)")), 6),
            PanelSpec("stat", "Near cap / exhausted", "Devices whose ε spent (PLD) is within "
                      "10% of their cap, and at their cap.", "none",
                      (Query(m("fedmsr_devices_near_budget_cap"), "{{run}} near cap"),
                       Query(m("fedmsr_devices_budget_exhausted"), "{{run}} exhausted")), 6),
            PanelSpec("stat", "p95 RDP bound", "95th percentile of the RDP bound over tracked "
                      "devices: an upper bound on the p95 of ε spent (the per-device PLD "
                      "figure is too costly to compute for a whole fleet on every scrape).",
                      "none", (Query(m("fedmsr_fleet_epsilon_rdp_bound_p95"),
                                     "{{run}} RDP bound (enforcement)"),), 6),
            PanelSpec("stat", "Tracked devices", "Devices the budget figures cover.", "none",
                      (Query(m("fedmsr_budget_tracked_devices"), "{{run}} tracked"),), 6),
            PanelSpec("bargauge", "RDP bound distribution", "Devices whose RDP bound on "
                      "epsilon is <= le (each device's ε spent is at most its bound).",
                      "none", (Query(m("fedmsr_device_epsilon_rdp_bound_bucket"), "{{le}}",
                                     heatmap=True),), 12),
            PanelSpec("bargauge", "Information bits distribution", "Devices whose uploaded "
                      "representations carry <= le bytes (bits / 8) in total.", "none",
                      (Query(m("fedmsr_device_information_bytes_bucket"), "{{le}}",
                             heatmap=True),), 12),
        )),
        ("DP-SGD releases", (
            PanelSpec("timeseries", "DP releases", "DP-SGD releases reported per second.",
                      "none", (Query(_rate("fedmsr_dp_events_total"), "{{run}} releases"),)),
            PanelSpec("timeseries", "Release parameters (mean)", "Noise multiplier sigma and "
                      "sampling rate q of the releases.", "none",
                      (Query(_mean("fedmsr_dp_noise_multiplier"), "{{run}} sigma"),
                       Query(_mean("fedmsr_dp_sampling_ratio"), "{{run}} q"))),
            PanelSpec("timeseries", "Steps per release (mean)", "Noisy steps per release.",
                      "none", (Query(_mean("fedmsr_dp_steps"), "{{run}} steps"),)),
            PanelSpec("timeseries", "Ledger disagreements", "Check-ins whose device ledger "
                      "disagreed with the server's.", "none",
                      (Query(_increase("fedmsr_ledger_disagreements_total"),
                             "{{run}} disagreements"),)),
        )),
    ),
)

LEAKAGE = DashboardSpec(
    "fedmsr-leakage", "fedmsr / Leakage",
    "What the representations reveal, and whether it grows as they accumulate.",
    (
        ("Temporal accumulation", (
            PanelSpec("bargauge", "PL(k)", "Attack accuracy with k accumulated "
                      "representations of one device.", "percentunit",
                      (Query(m("fedmsr_leakage_attack_accuracy_ratio"),
                             "{{run}} {{attack}} k={{k}}"),), 12),
            PanelSpec("timeseries", "Accumulation gain", "max_k PL(k) - PL(1) per attack, "
                      "and the run's alert level (fedmsr run --leakage-alert): an attack at "
                      "or above the line flags the collection.", "percentunit",
                      (Query(m("fedmsr_leakage_accumulation_gain_ratio"), "{{run}} {{attack}}"),
                       Query(m("fedmsr_leakage_alert_ratio"), "{{run}} alert level")), 6),
            PanelSpec("stat", "Largest k measured", "The leakage curve's reach.", "none",
                      (Query(m("fedmsr_leakage_max_k"), "{{run}} {{attack}}"),), 6),
            PanelSpec("timeseries", "Linkage AUC", "Cross-day linkage ROC AUC of k-sets of "
                      "one device's representations at the largest k measured (0.5: "
                      "chance; empty until a collection measures it).", "none",
                      (Query(m("fedmsr_leakage_linkage_auc_ratio"), "{{run}} linkage AUC"),),
                      12),
            PanelSpec("timeseries", "Randomized-release ε", "The run devices' "
                      "accumulated randomized-release epsilon (PLD, uploads only) after the "
                      "last collection: the largest and the mean (0 without a release); "
                      "between runs (job fedmsr-monitor) also the registry's whole fleet.",
                      "none", (Query(m("fedmsr_fleet_release_epsilon_max"), "{{run}} max"),
                               Query(m("fedmsr_fleet_release_epsilon_mean"), "{{run}} mean"),
                               Query(m("fedmsr_registry_release_epsilon_max"),
                                     "registry max"),
                               Query(m("fedmsr_registry_release_epsilon_mean"),
                                     "registry mean")), 12),
        )),
        ("Single representations", (
            PanelSpec("timeseries", "Identity probe above chance", "Identity probe accuracy "
                      "minus chance: 0 is the goal.", "percentunit",
                      (Query(m("fedmsr_probe_accuracy_ratio", IDENTITY) + " - "
                             + m("fedmsr_probe_chance_accuracy_ratio", IDENTITY),
                             "{{run}} identity - chance"),), 12),
            PanelSpec("timeseries", "KL rate", "Upper bound on what one clip's "
                      "representation carries.", "decbits",
                      (Query(f"{m('fedmsr_representation_kl_bytes')} * 8",
                             "{{run}} bits per clip"),), 12),
        )),
    ),
)

SECAGG_DEVICES = DashboardSpec(
    "fedmsr-secagg-devices", "fedmsr / Secure aggregation & devices",
    "The fleet by status, secure-aggregation stages and what was rejected.",
    (
        ("Fleet", (
            PanelSpec("timeseries", "Devices by status", "A run's devices (enrolled: not yet "
                      "taken part) and, between runs (job fedmsr-monitor), the registry's "
                      "whole fleet: enrolled, active, revoked.", "none",
                      (Query(m("fedmsr_devices"), "{{run}} {{status}}"),
                       Query(m("fedmsr_registry_devices"), "registry {{status}}"))),
            PanelSpec("timeseries", "Device-rounds", "Sampled, responded and dropped per "
                      "second.", "none",
                      (Query(_rate("fedmsr_devices_sampled_total"), "{{run}} sampled"),
                       Query(_rate("fedmsr_devices_responded_total"), "{{run}} responded"),
                       Query(_rate("fedmsr_devices_dropped_total"), "{{run}} dropped"))),
            PanelSpec("timeseries", "Updates rejected", "Updates discarded, by reason.",
                      "none", (Query(f"sum by ({_by('reason')}) "
                                     f"({_increase('fedmsr_updates_rejected_total')})",
                                     "{{run}} {{reason}}"),)),
        )),
        ("Secure aggregation", (
            PanelSpec("timeseries", "Stage duration (mean)", "Secure-aggregation stages.",
                      "s", (Query(_mean("fedmsr_round_phase_duration_seconds", "phase",
                                        matchers='phase=~"secagg_.*"'), "{{run}} {{phase}}"),)),
            PanelSpec("timeseries", "Dropouts after masking", "Devices whose masks had to be "
                      "recovered.", "none",
                      (Query(_increase("fedmsr_secagg_dropouts_total"), "{{run}} dropouts"),)),
            PanelSpec("timeseries", "Aborted rounds", "Rounds secure aggregation could not "
                      "unmask.", "none",
                      (Query(_increase("fedmsr_rounds_total", 'status="aborted"'),
                             "{{run}} aborted"),)),
        )),
    ),
)

DASHBOARDS = (OVERVIEW, BUDGETS, LEAKAGE, SECAGG_DEVICES)
AnyPanel = timeseries.Panel | stat.Panel | bargauge.Panel


def _target(query: Query, ref_id: str) -> prometheus.Dataquery:
    target = (prometheus.Dataquery().expr(query.expr).legend_format(query.legend)
              .ref_id(ref_id).datasource(DATASOURCE))
    if query.heatmap:
        target = target.format(PromQueryFormat.HEATMAP).instant()
    return target


def _empty_panel(kind: str) -> AnyPanel:
    """A panel of `kind` with its display options (legend, or which value a stat shows)."""
    if kind == "timeseries":
        return timeseries.Panel().legend(
            common.VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM).calcs([]))
    latest = common.ReduceDataOptions().values(False).calcs(["lastNotNull"]).fields("")
    if kind == "stat":
        return stat.Panel().reduce_options(latest)
    if kind == "bargauge":
        return bargauge.Panel().reduce_options(latest)
    raise ValueError(f"unknown panel kind {kind!r}")


def _panel(spec: PanelSpec) -> AnyPanel:
    panel = (_empty_panel(spec.kind).title(spec.title).description(spec.description)
             .unit(spec.unit).datasource(DATASOURCE).span(spec.width).height(8))
    for index, query in enumerate(spec.queries):
        panel = panel.with_target(_target(query, chr(ord("A") + index)))
    return panel


def _variables() -> list[Builder[VariableModel]]:
    """`job` (one at a time: a run's and the monitor's figures never mix) and `run` (All,
    or any set of runs to compare), both read from Prometheus' label values."""
    job = (QueryVariable("job").label("Job").datasource(DATASOURCE)
           .description("fedmsr-run: live runs; fedmsr-monitor: fedmsr monitor between runs")
           .query('label_values(fedmsr_run_status, job)')
           .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
           .current(VariableOption(text="fedmsr-run", value="fedmsr-run", selected=True))
           .multi(False).include_all(False))
    run = (QueryVariable("run").label("Run").datasource(DATASOURCE)
           .description("The run ids to show (All: every run, and fedmsr monitor's series)")
           .query(f'label_values(fedmsr_run_status{{job=~"{JOB}"}}, run)')
           .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
           .current(VariableOption(text="All", value="$__all", selected=True))
           .multi(True).include_all(True).all_value(ALL))
    return [job, run]


def build(spec: DashboardSpec) -> Dashboard:
    dashboard = (Dashboard(spec.title).uid(spec.uid).description(spec.description)
                 .tags(["fedmsr"]).refresh("10s").time("now-1h", "now").timezone("browser")
                 .tooltip(DashboardCursorSync.CROSSHAIR).readonly().variables(_variables()))
    for title, panels in spec.rows:
        dashboard = dashboard.with_row(Row(title))
        for panel in panels:
            dashboard = dashboard.with_panel(_panel(panel))
    return dashboard


#: What grafana-foundation-sdk writes that Grafana's published dashboard schema
#: (@grafana/schema, monitoring/grafana/schema/) no longer has: the long-gone dashboard
#: `style`, and on a query variable the interval-variable fields and a placeholder `id`.
OBSOLETE_DASHBOARD_KEYS = ("style",)
OBSOLETE_VARIABLE_KEYS = ("auto", "auto_count", "auto_min", "id")


def _as_json(spec: DashboardSpec) -> dict[str, object]:
    """The built dashboard as Grafana's schema has it (obsolete SDK keys dropped)."""
    board = json.loads(json.dumps(build(spec).build(), cls=JSONEncoder))
    for key in OBSOLETE_DASHBOARD_KEYS:
        board.pop(key, None)
    for variable in board.get("templating", {}).get("list", []):
        for key in OBSOLETE_VARIABLE_KEYS:
            variable.pop(key, None)
    return board


def render(spec: DashboardSpec) -> str:
    """The dashboard's JSON, deterministic (sorted keys) so regeneration is byte-stable."""
    return json.dumps(_as_json(spec), sort_keys=True, indent=2) + "\n"


def expected_files() -> dict[str, str]:
    return {f"{spec.uid}.json": render(spec) for spec in DASHBOARDS}


def write(output_dir: Path = OUTPUT_DIR) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in expected_files().items():
        path = output_dir / name
        path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        stale = [name for name, text in expected_files().items()
                 if not (OUTPUT_DIR / name).exists() or (OUTPUT_DIR / name).read_text() != text]
        for name in stale:
            print(f"error: {OUTPUT_DIR / name} is stale; run `python -m monitoring.dashboards`",
                  file=sys.stderr)
        return 1 if stale else 0
    if argv:
        print("usage: python -m monitoring.dashboards [--check]", file=sys.stderr)
        return 2
    for path in write():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
