"""The Grafana dashboards, built in Python with grafana-foundation-sdk.

`python -m monitoring.dashboards` regenerates `monitoring/grafana/dashboards/*.json`
(committed, so Grafana's file provisioning picks them up without Python); a test
regenerates them and compares byte for byte, so the JSON never drifts from this module.
`--check` exits 1 when the committed files are stale.

Queries use only Grafana's `$__rate_interval` variable, so every one can also be
evaluated straight against Prometheus (the tests substitute a window) and none depends on
a template variable an operator has to set first. Every query is fleet-level: no
device-id labels exist to select on.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, common, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync, DataSourceRef
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DATASOURCE = DataSourceRef(type_val="prometheus", uid="fedmsr-prometheus")
OUTPUT_DIR = Path(__file__).parent / "grafana" / "dashboards"
RATE = "$__rate_interval"


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


def _mean(metric: str, by: str = "") -> str:
    """Mean of a histogram's observations over the rate window (sum / count)."""
    group = f" by ({by})" if by else ""
    return (f"sum{group} (rate({metric}_sum[{RATE}])) / "
            f"sum{group} (rate({metric}_count[{RATE}]))")


def _p(q: float, metric: str, by: str = "") -> str:
    extra = f", {by}" if by else ""
    return f"histogram_quantile({q}, sum by (le{extra}) (rate({metric}_bucket[{RATE}])))"


OVERVIEW = DashboardSpec(
    "fedmsr-overview", "fedmsr / Federation overview",
    "Progress, timing, participation and representation quality of the live run.",
    (
        ("Run", (
            PanelSpec("stat", "Run status", "The current run's status (1 = this one).", "none",
                      (Query("fedmsr_run_status == 1", "{{status}}"),), 6),
            PanelSpec("stat", "Rounds", "Rounds finished of those planned.", "none",
                      (Query("fedmsr_run_rounds_completed", "completed"),
                       Query("fedmsr_run_rounds_planned", "planned")), 6),
            PanelSpec("stat", "DP-SGD", "1 when devices train with DP-SGD.", "bool_on_off",
                      (Query("fedmsr_run_dp_sgd_enabled", "DP-SGD"),), 6),
            PanelSpec("timeseries", "Rounds by outcome", "Cumulative rounds per outcome.",
                      "none", (Query("sum by (status) (fedmsr_rounds_total)", "{{status}}"),), 6),
        )),
        ("Timing", (
            PanelSpec("timeseries", "Round duration", "p50 / p95 of round wall time.", "s",
                      (Query(_p(0.5, "fedmsr_round_duration_seconds"), "p50"),
                       Query(_p(0.95, "fedmsr_round_duration_seconds"), "p95"))),
            PanelSpec("timeseries", "Phase duration (mean)", "Check-in, train, aggregate, "
                      "evaluate (and secure-aggregation stages once enabled).", "s",
                      (Query(_mean("fedmsr_round_phase_duration_seconds", "phase"),
                             "{{phase}}"),)),
            PanelSpec("timeseries", "Device training time", "Slowest device in the last "
                      "round, and device-seconds of training per second.", "s",
                      (Query("fedmsr_round_client_train_max_seconds", "slowest device"),
                       Query(f"rate(fedmsr_client_train_seconds_total[{RATE}])",
                             "device-s per s"))),
        )),
        ("Participation", (
            PanelSpec("timeseries", "Devices in the last round", "Sampled, responded, "
                      "dropped.", "none", (Query("fedmsr_round_devices", "{{outcome}}"),)),
            PanelSpec("timeseries", "Dropout ratio", "Dropped / sampled device-rounds.",
                      "percentunit",
                      (Query(f"sum(rate(fedmsr_devices_dropped_total[{RATE}])) / "
                             f"sum(rate(fedmsr_devices_sampled_total[{RATE}]))", "dropout"),)),
            PanelSpec("timeseries", "Traffic", "Bytes sent to / received from devices.",
                      "Bps",
                      (Query(f"rate(fedmsr_network_sent_bytes_total[{RATE}])", "sent"),
                       Query(f"rate(fedmsr_network_received_bytes_total[{RATE}])",
                             "received"))),
        )),
        ("Representation", (
            PanelSpec("timeseries", "Probe accuracy (DTP / PL)", "Held-out linear probes: "
                      "utility (activity) should rise, identity should stay near chance.",
                      "percentunit",
                      (Query("fedmsr_probe_accuracy_ratio", "{{probe}}"),
                       Query("fedmsr_probe_chance_accuracy_ratio", "{{probe}} chance"))),
            PanelSpec("timeseries", "KL rate", "Mean KL(q(z|x) || prior) per held-out clip.",
                      "decbits", (Query("fedmsr_representation_kl_bytes * 8", "bits per clip"),)),
            PanelSpec("timeseries", "Held-out loss", "Server-side VIB loss after each round.",
                      "none", (Query("fedmsr_round_loss", "loss"),)),
        )),
    ),
)

BUDGETS = DashboardSpec(
    "fedmsr-budgets", "fedmsr / Privacy budgets",
    "Per-device DP and information budgets, as fleet distributions (no device ids).",
    (
        ("Epsilon", (
            PanelSpec("stat", "Max epsilon", "Largest epsilon any tracked device has spent.",
                      "none", (Query("fedmsr_fleet_epsilon_max", "max"),), 6),
            PanelSpec("stat", "p95 epsilon", "95th percentile over tracked devices.", "none",
                      (Query("fedmsr_fleet_epsilon_p95", "p95"),), 6),
            PanelSpec("stat", "Near cap / exhausted", "Devices within 10% of their cap, and "
                      "at their cap.", "none",
                      (Query("fedmsr_devices_near_budget_cap", "near cap"),
                       Query("fedmsr_devices_budget_exhausted", "exhausted")), 6),
            PanelSpec("stat", "Tracked devices", "Devices the budget figures cover.", "none",
                      (Query("fedmsr_budget_tracked_devices", "tracked"),), 6),
            PanelSpec("bargauge", "Epsilon distribution", "Devices with epsilon <= le.",
                      "none", (Query("fedmsr_device_epsilon_bucket", "{{le}}", heatmap=True),),
                      12),
            PanelSpec("bargauge", "Information bits distribution", "Devices whose uploaded "
                      "representations carry <= le bytes (bits / 8) in total.", "none",
                      (Query("fedmsr_device_information_bytes_bucket", "{{le}}",
                             heatmap=True),), 12),
        )),
        ("DP-SGD releases", (
            PanelSpec("timeseries", "DP releases", "DP-SGD releases reported per second.",
                      "none", (Query(f"rate(fedmsr_dp_events_total[{RATE}])", "releases"),)),
            PanelSpec("timeseries", "Release parameters (mean)", "Noise multiplier sigma and "
                      "sampling rate q of the releases.", "none",
                      (Query(_mean("fedmsr_dp_noise_multiplier"), "sigma"),
                       Query(_mean("fedmsr_dp_sampling_ratio"), "q"))),
            PanelSpec("timeseries", "Steps per release (mean)", "Noisy steps per release.",
                      "none", (Query(_mean("fedmsr_dp_steps"), "steps"),)),
            PanelSpec("timeseries", "Ledger disagreements", "Check-ins whose device ledger "
                      "disagreed with the server's.", "none",
                      (Query(f"increase(fedmsr_ledger_disagreements_total[{RATE}])",
                             "disagreements"),)),
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
                      (Query("fedmsr_leakage_attack_accuracy_ratio", "{{attack}} k={{k}}"),),
                      12),
            PanelSpec("timeseries", "Accumulation gain", "max_k PL(k) - PL(1) per attack, "
                      "and the run's alert level (fedmsr run --leakage-alert): an attack at "
                      "or above the line flags the collection.", "percentunit",
                      (Query("fedmsr_leakage_accumulation_gain_ratio", "{{attack}}"),
                       Query("fedmsr_leakage_alert_ratio", "alert level")), 6),
            PanelSpec("stat", "Largest k measured", "The leakage curve's reach.", "none",
                      (Query("fedmsr_leakage_max_k", "{{attack}}"),), 6),
            PanelSpec("timeseries", "Linkage AUC", "Cross-day linkage ROC AUC of k-sets of "
                      "one device's representations at the largest k measured (0.5: "
                      "chance; empty until a collection measures it).", "none",
                      (Query("fedmsr_leakage_linkage_auc_ratio", "linkage AUC"),), 12),
            PanelSpec("timeseries", "Randomized-release epsilon", "The run devices' "
                      "accumulated randomized-release epsilon (PLD, uploads only) after the "
                      "last collection: the largest and the mean (0 without a release).",
                      "none", (Query("fedmsr_fleet_release_epsilon_max", "max"),
                               Query("fedmsr_fleet_release_epsilon_mean", "mean")), 12),
        )),
        ("Single representations", (
            PanelSpec("timeseries", "Identity probe above chance", "Identity probe accuracy "
                      "minus chance: 0 is the goal.", "percentunit",
                      (Query('fedmsr_probe_accuracy_ratio{probe="identity"} - '
                             'fedmsr_probe_chance_accuracy_ratio{probe="identity"}',
                             "identity - chance"),), 12),
            PanelSpec("timeseries", "KL rate", "Upper bound on what one clip's "
                      "representation carries.", "decbits",
                      (Query("fedmsr_representation_kl_bytes * 8", "bits per clip"),), 12),
        )),
    ),
)

SECAGG_DEVICES = DashboardSpec(
    "fedmsr-secagg-devices", "fedmsr / Secure aggregation & devices",
    "The fleet by status, secure-aggregation stages and what was rejected.",
    (
        ("Fleet", (
            PanelSpec("timeseries", "Devices by status", "Enrolled, active, revoked.", "none",
                      (Query("fedmsr_devices", "{{status}}"),)),
            PanelSpec("timeseries", "Device-rounds", "Sampled, responded and dropped per "
                      "second.", "none",
                      (Query(f"rate(fedmsr_devices_sampled_total[{RATE}])", "sampled"),
                       Query(f"rate(fedmsr_devices_responded_total[{RATE}])", "responded"),
                       Query(f"rate(fedmsr_devices_dropped_total[{RATE}])", "dropped"))),
            PanelSpec("timeseries", "Updates rejected", "Updates discarded, by reason.",
                      "none", (Query("sum by (reason) (increase(fedmsr_updates_rejected_"
                                     f"total[{RATE}]))", "{{reason}}"),)),
        )),
        ("Secure aggregation", (
            PanelSpec("timeseries", "Stage duration (mean)", "Secure-aggregation stages.",
                      "s", (Query("sum by (phase) (rate(fedmsr_round_phase_duration_seconds_"
                                  f"sum{{phase=~\"secagg_.*\"}}[{RATE}])) / sum by (phase) "
                                  "(rate(fedmsr_round_phase_duration_seconds_count"
                                  f"{{phase=~\"secagg_.*\"}}[{RATE}]))", "{{phase}}"),)),
            PanelSpec("timeseries", "Dropouts after masking", "Devices whose masks had to be "
                      "recovered.", "none",
                      (Query(f"increase(fedmsr_secagg_dropouts_total[{RATE}])", "dropouts"),)),
            PanelSpec("timeseries", "Aborted rounds", "Rounds secure aggregation could not "
                      "unmask.", "none",
                      (Query(f'increase(fedmsr_rounds_total{{status="aborted"}}[{RATE}])',
                             "aborted"),)),
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


def build(spec: DashboardSpec) -> Dashboard:
    dashboard = (Dashboard(spec.title).uid(spec.uid).description(spec.description)
                 .tags(["fedmsr"]).refresh("10s").time("now-1h", "now").timezone("browser")
                 .tooltip(DashboardCursorSync.CROSSHAIR).readonly())
    for title, panels in spec.rows:
        dashboard = dashboard.with_row(Row(title))
        for panel in panels:
            dashboard = dashboard.with_panel(_panel(panel))
    return dashboard


def render(spec: DashboardSpec) -> str:
    """The dashboard's JSON, deterministic (sorted keys) so regeneration is byte-stable."""
    return json.dumps(build(spec).build(), cls=JSONEncoder, sort_keys=True, indent=2) + "\n"


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
