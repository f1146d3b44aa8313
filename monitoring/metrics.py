"""Every fedmsr Prometheus metric, defined once.

Each :class:`FedmsrMetrics` owns a private :class:`CollectorRegistry` (never the global
default), so a test, the engine process and `fedmsr monitor` each get their own, and a
second instance in one process does not clash.

Naming follows Prometheus conventions: `fedmsr_` prefix, base units (`_seconds`,
`_bytes`, `_ratio` for accuracies and fractions, `_bits` for information), `_total` on
counters. There are **no per-device labels**: a fleet has 10^4 - 10^6 devices, so
per-device quantities (epsilon spent, information bits) are exported as fleet-level
distributions (gauge histograms, rebuilt from a snapshot) and top-level gauges (max,
p95, counts near / over the cap). Every label has a small, fixed set of values.

Every metric starts from a value that is true before its first event (no tracked
devices, no disagreements, no dropouts), so dashboards and alerts read it from the
first scrape.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeHistogramMetricFamily
from prometheus_client.registry import Collector

from privacy.accounting.fleet import FleetBudgets
from privacy.wire.round_record import RoundRecord

# `_created` series double every counter and histogram and nothing here reads them.
disable_created_metrics()

RUN_STATUSES = ("running", "completed", "failed", "budget-exhausted")
ROUND_STATUSES = ("completed", "failed", "aborted")
#: Phases of a round; the `secagg_*` stages are timed in rounds with secure aggregation.
PHASES = ("checkin", "train", "secagg_setup", "secagg_share_keys", "secagg_collect_masked",
          "secagg_consistency", "secagg_unmask", "aggregate", "evaluate")
#: The registry's device states: enrolled (keys issued) -> active (took part) -> revoked.
DEVICE_STATUSES = ("enrolled", "active", "revoked")
#: What `fedmsr monitor` reads between runs.
MONITOR_SOURCES = ("runs", "registry")
#: Why an update was dropped: the update validator's reasons (strategies/update_validation.py
#: REASONS, in check order; monitoring does not import strategies), then the budget's.
REJECT_REASONS = ("wrong_run", "stale_round", "identity", "malformed", "shape", "dtype",
                  "non_finite", "norm_bound", "metrics", "revoked")
PROBES = ("utility", "identity")
LEAKAGE_KS = (1, 2, 4, 8, 16, 32, 64)
LEAKAGE_ATTACKS = ("identity",)

EPSILON_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
#: Information is exported in bytes (Prometheus' base unit; promtool rejects `_bits`):
#: 1 bit .. 1 Mibit, as bytes.
INFORMATION_BYTES_BUCKETS = tuple(2.0 ** k / 8 for k in range(0, 21, 2))
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

class FleetDistribution(Collector):
    """A fleet-wide distribution rebuilt from a snapshot (a Prometheus gauge histogram).

    A regular Histogram only accumulates observations; "how many devices have spent at
    most x epsilon *now*" must be replaced whole each time the ledger is read.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = tuple(float(b) for b in buckets)
        self._counts = [0.0] * (len(self.bounds) + 1)
        self._sum = 0.0

    def set(self, values: Sequence[float] | np.ndarray) -> None:
        array = np.asarray(values, dtype=float)
        if array.size and not np.all(np.isfinite(array)):
            raise ValueError(f"{self.name}: values must be finite")
        cumulative = [float(np.count_nonzero(array <= b)) for b in self.bounds]
        self._counts = [*cumulative, float(array.size)]
        self._sum = float(array.sum())

    def collect(self) -> Iterator[GaugeHistogramMetricFamily]:
        family = GaugeHistogramMetricFamily(self.name, self.documentation, labels=[])
        les = [_le(b) for b in self.bounds] + ["+Inf"]
        family.add_metric([], list(zip(les, self._counts, strict=True)), gsum_value=self._sum)
        yield family


class LateGauge:
    """A gauge without a series until its first value (then an ordinary gauge)."""

    def __init__(self, registry: CollectorRegistry, name: str, documentation: str) -> None:
        self._registry = registry
        self.name = name
        self._gauge = Gauge(name, documentation, registry=None)
        self._registered = False

    def set(self, value: float) -> None:
        self._gauge.set(value)
        if not self._registered:
            self._registry.register(self._gauge)
            self._registered = True


def _le(bound: float) -> str:
    return repr(float(bound))


def _set_release(gauges: tuple[Gauge, Gauge], epsilon_max: float, epsilon_mean: float) -> None:
    for name, x in (("max", epsilon_max), ("mean", epsilon_mean)):
        if not math.isfinite(x) or x < 0:
            raise ValueError(f"release epsilon {name} must be finite and >= 0, got {x!r}")
    gauges[0].set(epsilon_max)
    gauges[1].set(epsilon_mean)


class RegistryFleetMetrics:
    """What `fedmsr monitor` reads from the fleet registry: the whole fleet, not a run's
    devices, so under names of its own (a run exports `fedmsr_devices` and
    `fedmsr_fleet_release_epsilon_*` for its own devices)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.devices = Gauge("fedmsr_registry_devices", "Devices in the fleet registry by "
                             "status (fedmsr monitor)", ["status"], registry=r)
        self.release_epsilon_max = Gauge(
            "fedmsr_registry_release_epsilon_max", "Largest accumulated randomized-release "
            "epsilon of a registry device not revoked (PLD at delta 1e-5; fedmsr monitor)",
            registry=r)
        self.release_epsilon_mean = Gauge(
            "fedmsr_registry_release_epsilon_mean", "Mean accumulated randomized-release "
            "epsilon over the registry's devices not revoked (PLD at delta 1e-5; fedmsr "
            "monitor)", registry=r)

    def set_release_epsilon(self, epsilon_max: float, epsilon_mean: float) -> None:
        _set_release((self.release_epsilon_max, self.release_epsilon_mean), epsilon_max,
                     epsilon_mean)


class FedmsrMetrics:
    """The metric set of one process (engine, `fedmsr monitor`, a test).

    `between_runs` adds the registry's own figures (:class:`RegistryFleetMetrics`), which
    only `fedmsr monitor` reads.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 between_runs: bool = False) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.fleet_registry = RegistryFleetMetrics(r) if between_runs else None
        # -- run ---------------------------------------------------------------------
        self.run_status = Gauge("fedmsr_run_status", "1 for the run's current status, 0 for "
                                "the others", ["status"], registry=r)
        self.run_rounds_planned = Gauge("fedmsr_run_rounds_planned",
                                        "Rounds the current run plans", registry=r)
        self.run_rounds_completed = Gauge("fedmsr_run_rounds_completed",
                                          "Rounds the current run has finished", registry=r)
        self.run_dp_sgd = Gauge("fedmsr_run_dp_sgd_enabled",
                                "1 when devices train with DP-SGD in the current run", registry=r)
        # Times exist only once known: no run (or no round yet) exports no series, never
        # a 0 that reads as 1970.
        self.run_start_time = LateGauge(r, "fedmsr_run_start_time_seconds",
                                        "Unix time the current run (or resume) started")
        self.last_round_time = LateGauge(r, "fedmsr_last_round_end_time_seconds",
                                         "Unix time the last round finished")
        # -- rounds --------------------------------------------------------------------
        self.rounds = Counter("fedmsr_rounds", "Rounds by outcome (aborted: secure "
                              "aggregation could not unmask)", ["status"], registry=r)
        self.round_duration = Histogram("fedmsr_round_duration_seconds", "Wall time of a round",
                                        buckets=DURATION_BUCKETS, registry=r)
        self.phase_duration = Histogram("fedmsr_round_phase_duration_seconds",
                                        "Wall time of each phase of a round", ["phase"],
                                        buckets=DURATION_BUCKETS, registry=r)
        self.round_devices = Gauge("fedmsr_round_devices", "Devices sampled / responded / "
                                   "dropped in the last round", ["outcome"], registry=r)
        self.devices_sampled = Counter("fedmsr_devices_sampled", "Device-rounds sampled for "
                                       "training", registry=r)
        self.devices_responded = Counter("fedmsr_devices_responded", "Device-rounds that "
                                         "returned an update", registry=r)
        self.devices_dropped = Counter("fedmsr_devices_dropped", "Device-rounds sampled "
                                       "that returned no update in time", registry=r)
        self.updates_rejected = Counter("fedmsr_updates_rejected", "Updates received and "
                                        "discarded, by reason", ["reason"], registry=r)
        self.sent_bytes = Counter("fedmsr_network_sent_bytes", "Bytes sent to devices",
                                  registry=r)
        self.received_bytes = Counter("fedmsr_network_received_bytes",
                                      "Bytes received from devices", registry=r)
        self.client_train_seconds = Counter("fedmsr_client_train_seconds", "Device training "
                                            "time, summed over devices", registry=r)
        self.client_train_max = Gauge("fedmsr_round_client_train_max_seconds",
                                      "Slowest device's training time in the last round",
                                      registry=r)
        self.secagg_dropouts = Counter("fedmsr_secagg_dropouts", "Devices lost after "
                                       "masking (their masks had to be recovered)", registry=r)
        # -- representation quality and leakage ----------------------------------------
        self.probe_accuracy = Gauge("fedmsr_probe_accuracy_ratio", "Held-out linear probe "
                                    "accuracy (utility: DTP, identity: PL)", ["probe"],
                                    registry=r)
        self.probe_chance = Gauge("fedmsr_probe_chance_accuracy_ratio", "Chance accuracy of "
                                  "each probe", ["probe"], registry=r)
        self.round_loss = Gauge("fedmsr_round_loss", "Server held-out VIB loss after the last "
                                "round", registry=r)
        self.kl_bytes = Gauge("fedmsr_representation_kl_bytes", "Mean KL(q(z|x)||prior) per "
                              "clip on held-out clips (bytes: bits / 8)", registry=r)
        self.leakage_accuracy = Gauge("fedmsr_leakage_attack_accuracy_ratio", "Attack "
                                      "accuracy with k accumulated representations of one "
                                      "device, PL(k)", ["attack", "k"], registry=r)
        self.leakage_gain = Gauge("fedmsr_leakage_accumulation_gain_ratio", "max_k PL(k) - "
                                  "PL(1): what accumulating representations adds",
                                  ["attack"], registry=r)
        self.leakage_max_k = Gauge("fedmsr_leakage_max_k", "Largest k measured for the "
                                   "leakage curve", ["attack"], registry=r)
        # NaN until measured: "not measured" is the true value before a collection, and
        # a panel shows it as no value rather than as a figure nobody measured.
        self.linkage_auc = Gauge("fedmsr_leakage_linkage_auc_ratio", "Cross-day linkage "
                                 "ROC AUC of k-sets of one device's representations, at the "
                                 "largest k measured (0.5: chance; NaN: not measured)",
                                 registry=r)
        self.linkage_auc.set(math.nan)
        self.leakage_alert = Gauge("fedmsr_leakage_alert_ratio", "Accumulation gain at which "
                                   "the run flags a collection (fedmsr run --leakage-alert; "
                                   "NaN: unknown)", registry=r)
        self.leakage_alert.set(math.nan)
        # -- devices, DP and budgets ---------------------------------------------------
        self.devices = Gauge("fedmsr_devices", "The run's devices by status (enrolled: not "
                             "yet taken part in the run)", ["status"], registry=r)
        self.runs = Gauge("fedmsr_runs", "Runs in the runs directory by status (fedmsr "
                          "monitor)", ["status"], registry=r)
        self.source_up = Gauge("fedmsr_monitor_source_up", "1 when fedmsr monitor could read "
                               "the source at the last scrape", ["source"], registry=r)
        self.dp_events = Counter("fedmsr_dp_events", "DP-SGD releases reported by devices",
                                 registry=r)
        self.dp_sampling = Histogram("fedmsr_dp_sampling_ratio", "Poisson sampling rate q of "
                                     "each DP-SGD release", registry=r,
                                     buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.99, 1.0))
        self.dp_noise = Histogram("fedmsr_dp_noise_multiplier", "Noise multiplier sigma of "
                                  "each DP-SGD release", registry=r,
                                  buckets=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0))
        self.dp_steps = Histogram("fedmsr_dp_steps", "Noisy steps of each DP-SGD release",
                                  registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024))
        # Two epsilons, never one under the other's name: the reported spend (PLD, what
        # `fedmsr budget show` prints) and the RDP bound enforcement checks first. The
        # per-device distribution and p95 are of the bound, the one figure cheap enough
        # for every device (privacy.accounting.fleet says why).
        self.epsilon_bound = FleetDistribution(
            "fedmsr_device_epsilon_rdp_bound", "RDP bound on the epsilon each tracked device "
            "has spent (>= the reported figure; fleet distribution)", EPSILON_BUCKETS)
        self.information = FleetDistribution(
            "fedmsr_device_information_bytes", "Information each tracked device has uploaded "
            "(sum of per-clip KL; bytes = bits / 8; fleet distribution)",
            INFORMATION_BYTES_BUCKETS)
        r.register(self.epsilon_bound)
        r.register(self.information)
        self.epsilon_max = Gauge("fedmsr_fleet_epsilon_spent_max", "Largest epsilon spent "
                                 "(reported, PLD, as fedmsr budget show prints it) by a "
                                 "tracked device", registry=r)
        self.rdp_bound_max = Gauge("fedmsr_fleet_epsilon_rdp_bound_max", "Largest RDP bound "
                                   "on a tracked device's epsilon (>= its spend; what "
                                   "enforcement compares to the cap first)", registry=r)
        self.rdp_bound_p95 = Gauge("fedmsr_fleet_epsilon_rdp_bound_p95", "95th percentile of "
                                   "the RDP bound over tracked devices", registry=r)
        self.near_cap = Gauge("fedmsr_devices_near_budget_cap", "Tracked devices whose epsilon "
                              "spent (PLD) is within 10% of their cap (not yet at it)",
                              registry=r)
        self.exhausted = Gauge("fedmsr_devices_budget_exhausted", "Tracked devices whose "
                               "epsilon spent (PLD, the figure that finally decides) reached "
                               "their cap", registry=r)
        self.release_epsilon_max = Gauge(
            "fedmsr_fleet_release_epsilon_max", "Largest accumulated randomized-release "
            "epsilon of a run device (PLD, uploads only) after the last collection",
            registry=r)
        self.release_epsilon_mean = Gauge(
            "fedmsr_fleet_release_epsilon_mean", "Mean accumulated randomized-release epsilon "
            "over the run's devices (PLD, uploads only) after the last collection",
            registry=r)
        self.budget_tracked = Gauge("fedmsr_budget_tracked_devices", "Devices the budget "
                                    "figures cover (0 until the ledger feeds them)", registry=r)
        self.ledger_disagreements = Counter("fedmsr_ledger_disagreements", "Check-ins whose "
                                            "device ledger counted more than the server's "
                                            "(a release the server did not charge)",
                                            registry=r)
        self._initialise_children()

    def _initialise_children(self) -> None:
        """Create every labelled series up front, so rate() and alerts see a 0, not a gap."""
        for status in ROUND_STATUSES:
            self.rounds.labels(status=status)
        for phase in PHASES:
            self.phase_duration.labels(phase=phase)
        for reason in REJECT_REASONS:
            self.updates_rejected.labels(reason=reason)
        for status in RUN_STATUSES:
            self.run_status.labels(status=status).set(0)
        self.set_budgets(FleetBudgets())

    # -- setters used by the observer, `fedmsr monitor` and (later) the ledger ----------

    def set_run_status(self, status: str) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        for name in RUN_STATUSES:
            self.run_status.labels(status=name).set(1 if name == status else 0)

    def set_budgets(self, budgets: FleetBudgets) -> None:
        """The fleet's spend (reported, PLD), its RDP bounds, and the counts near / at cap.

        Near-cap and exhausted counts are on the reported spend: enforcement refuses a
        device only once that figure would pass its cap (the bound only decides when it
        fits).
        """
        bound = np.asarray(budgets.epsilon_rdp_bound, dtype=float)
        self.epsilon_bound.set(bound)
        self.budget_tracked.set(bound.size)
        self.epsilon_max.set(budgets.epsilon_spent_max)
        self.rdp_bound_max.set(float(bound.max()) if bound.size else 0.0)
        self.rdp_bound_p95.set(float(np.quantile(bound, 0.95)) if bound.size else 0.0)
        self.exhausted.set(budgets.exhausted)
        self.near_cap.set(budgets.near_cap)

    def set_information_bits(self, bits: Sequence[float]) -> None:
        """Each tracked device's uploaded information, in bits (exported as bytes)."""
        self.information.set(np.asarray(bits, dtype=float) / 8.0)

    def set_kl_bits(self, bits_per_clip: float) -> None:
        self.kl_bytes.set(bits_per_clip / 8.0)

    def set_round_quality(self, record: RoundRecord) -> None:
        """A finished round's probes (accuracy and chance), held-out loss and KL rate."""
        self.probe_accuracy.labels(probe="utility").set(record.utility_acc)
        self.probe_chance.labels(probe="utility").set(record.utility_chance)
        self.probe_accuracy.labels(probe="identity").set(record.identity_acc)
        self.probe_chance.labels(probe="identity").set(record.identity_chance)
        self.round_loss.set(record.loss)
        self.set_kl_bits(record.kl_bits)

    def set_leakage(self, attack: str, curve: dict[int, float]) -> None:
        """PL(k) for the measured k, and the accumulation gain max_k PL(k) - PL(1)."""
        if 1 not in curve:
            raise ValueError("the leakage curve needs PL(1), the single-representation attack")
        for k, accuracy in sorted(curve.items()):
            if not math.isfinite(accuracy):
                raise ValueError(f"PL({k}) is not finite")
            self.leakage_accuracy.labels(attack=attack, k=str(k)).set(accuracy)
        self.leakage_gain.labels(attack=attack).set(max(curve.values()) - curve[1])
        self.leakage_max_k.labels(attack=attack).set(max(curve))

    def set_release_epsilon(self, epsilon_max: float, epsilon_mean: float) -> None:
        """The fleet's accumulated randomized-release epsilon (fleet figures, no device)."""
        _set_release((self.release_epsilon_max, self.release_epsilon_mean), epsilon_max,
                     epsilon_mean)

    def set_linkage_auc(self, auc: float) -> None:
        """Linkage AUC at the largest k measured."""
        if not 0.0 <= auc <= 1.0:
            raise ValueError(f"a linkage AUC is in [0, 1], got {auc!r}")
        self.linkage_auc.set(auc)

    def set_collection(self, record: RoundRecord) -> None:
        """A collection round's linkage AUC, alert level and fleet release epsilon (a round
        without them leaves the gauges at the last collection's figures)."""
        if record.linkage_auc is not None:
            self.set_linkage_auc(record.linkage_auc[1])
        if record.leakage_crossed is not None:
            self.leakage_alert.set(record.leakage_crossed.alert)
        if record.release_epsilon is not None:
            self.set_release_epsilon(record.release_epsilon.max, record.release_epsilon.mean)

    def metric_names(self) -> set[str]:
        """Every metric family name this set can expose (as scraped, without suffixes),
        the times not yet known included."""
        late = {gauge.name for gauge in (self.run_start_time, self.last_round_time)}
        return {family.name for family in self.registry.collect()} | late
