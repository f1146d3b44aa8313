"""The run configuration: one typed, validated object for every way a run starts.

`fedmsr run` builds it from its options, `flwr run .` from the `[tool.flwr.app.config]`
table (Flower's `context.run_config`), and `--resume` from the `run.json` a run wrote
when it started. All three go through :func:`RunConfig.validate`, so a bad value is
refused the same way whichever door it came in by: one line naming the field and the fix.

A setting is defined once, as a RunConfig field: its type and default are the option's
and the table's. A field that `fedmsr run` offers carries a :class:`RunOption` (its help
text, and its option name where that differs); the table holds every field whose default
Flower's run config can express (tests/test_run_options.py checks both).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from privacy.checks import is_finite, is_int, is_number

if TYPE_CHECKING:
    from privacy.footage_manifest import Manifest

UTILITIES = ("supervised", "ssl", "both")
#: `--dp` values, indexed by dp_sgd + 2 * central_dp.
DP_MODES = ("none", "local", "central", "both")
IMAGE_SIZES = (32, 64)
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and the fix."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.field_name = name
        self.problem = problem


#: The sections of `fedmsr run --help`, in the order they are printed (`RunOption.panel`).
PANEL_FEDERATION, PANEL_DATA, PANEL_TRAINING = "Federation", "Data", "Training"
PANEL_DP, PANEL_SECAGG = "Differential privacy", "Secure aggregation"
PANEL_ROBUST, PANEL_COLLECTION = "Robust aggregation", "Collection and release"
PANEL_DEPLOYMENT, PANEL_MONITORING = "Deployment", "Monitoring"
PANEL_OTHER, PANEL_DEPRECATED = "Other", "Deprecated"
RUN_PANELS = (PANEL_FEDERATION, PANEL_DATA, PANEL_TRAINING, PANEL_DP, PANEL_SECAGG, PANEL_ROBUST,
              PANEL_COLLECTION, PANEL_DEPLOYMENT, PANEL_MONITORING, PANEL_OTHER, PANEL_DEPRECATED)


@dataclass(frozen=True)
class RunOption:
    """How `fedmsr run` offers a RunConfig field: the field stays the one definition of the
    setting (name, type, default); this adds only what the command line shows of it.

    ``flag`` is the option's name where it is not the field's (``--clip`` for
    ``clip_norm``); ``unset`` is the command-line value that stands for a default of
    None (``--epsilon-cap 0``: no cap), since an option cannot be given None; ``panel``
    is the section of `fedmsr run --help` that lists it (one of ``RUN_PANELS``; a new
    option that names none is listed under "Other").
    """

    help: str
    flag: str = ""
    unset: float | None = None
    panel: str = PANEL_OTHER

    def name_for(self, field_name: str) -> str:
        return self.flag or "--" + field_name.replace("_", "-")


#: Key of a RunConfig field's :class:`RunOption` in its dataclass field metadata.
RUN_OPTION = "fedmsr.run_option"
_T = TypeVar("_T")


def _option(default: _T, help: str, *, flag: str = "", unset: float | None = None,
            panel: str = PANEL_OTHER) -> _T:
    """A RunConfig field that `fedmsr run` offers as an option."""
    return field(default=default, metadata={RUN_OPTION: RunOption(help, flag, unset, panel)})


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a federated run (same config + seed -> same numbers)."""

    devices: int = _option(8, "Synthetic fleet size (virtual SuperNodes).", panel=PANEL_FEDERATION)
    rounds: int = _option(3, "Federation rounds.", panel=PANEL_FEDERATION)
    seed: int = _option(0, "Seed for data, model, sampling and training.", panel=PANEL_FEDERATION)
    # synthetic fleet
    days: int = _option(4, "Training days of footage per device.", panel=PANEL_DATA)
    clips_per_day: int = _option(8, "Clips each device films per day.", panel=PANEL_DATA)
    frames: int = 8
    image_size: int = _option(32, "Frame size: 32 or 64.", panel=PANEL_DATA)
    eval_days: int = 4
    # encoder and local training
    latent_dim: int = _option(32, "Size of the encoder's latent representation z.",
                              panel=PANEL_TRAINING)
    width: int = 32
    utility: str = _option("supervised", "supervised | ssl | both.", panel=PANEL_TRAINING)
    beta: float = _option(0.01, "VIB weight on KL(q(z|x) || N(0, I)).", panel=PANEL_TRAINING)
    local_epochs: int = _option(1, "Local epochs per round.", panel=PANEL_TRAINING)
    batch_size: int = _option(
        16, "Local batch size; with DP-SGD the Poisson sample rate is q = batch / the "
        "device's clips (q = 1 when batch >= clips: no subsampling amplification).",
        panel=PANEL_TRAINING)
    learning_rate: float = _option(2e-3, "Local learning rate (Adam).", flag="--lr",
                                   panel=PANEL_TRAINING)
    # DP-SGD on the devices (`fedmsr run --dp local`; --dp-sgd is its old spelling)
    dp_sgd: bool = _option(False, "Deprecated alias of --dp local.", panel=PANEL_DEPRECATED)
    noise_multiplier: float = _option(1.0, "DP-SGD noise multiplier sigma.", panel=PANEL_DP)
    clip_norm: float = _option(1.0, "DP-SGD per-example clipping norm C.", flag="--clip",
        panel=PANEL_DP)
    # orchestration
    fraction_train: float = _option(1.0, "Fraction of devices per round.", panel=PANEL_FEDERATION)
    min_train_devices: int = _option(
        1, "Fewest devices whose updates make a round (fewer: the round fails).",
        flag="--min-devices", panel=PANEL_FEDERATION)
    round_timeout_s: float = _option(
        600.0, "Seconds a round waits for training replies; later ones are dropped.",
        flag="--round-timeout", panel=PANEL_FEDERATION)
    fleet_wait_s: float = _option(
        60.0, "Seconds a round waits for the whole fleet to connect before going on without "
        "the devices still missing.", flag="--fleet-wait", panel=PANEL_FEDERATION)
    reply_timeout_s: float = _option(
        120.0, "Seconds a round waits for check-in, evaluation and upload replies (training "
        "replies: --round-timeout).", flag="--reply-timeout", panel=PANEL_FEDERATION)
    eval_every: int = _option(
        1, "Ask the trained devices to evaluate the new model on their held-out clips every N "
        "rounds (and after the last); the server's own probes run every round.",
        panel=PANEL_FEDERATION)
    # secure aggregation (SecAgg+, docs/secure-aggregation.md); 0 = default k / t
    secure_aggregation: bool = _option(
        False, "SecAgg+: the server learns only the sum of updates.", panel=PANEL_SECAGG)
    secagg_neighbours: int = _option(0, "SecAgg+ neighbours per device (0: 2*ceil(log2 n)).",
                                     flag="--neighbours", panel=PANEL_SECAGG)
    secagg_threshold: int = _option(0, "SecAgg+ Shamir threshold (0: floor((k+C)/2)+1).",
                                    flag="--threshold", panel=PANEL_SECAGG)
    secagg_max_colluding: int = _option(
        0, "SecAgg+: enrolled devices C that may collude with the server; t and the "
        "consistency quorum are chosen so that C of them and the server learn only the sum.",
        flag="--max-colluding", panel=PANEL_SECAGG)
    secagg_clip: float = 1.0
    secagg_mod_bits: int = 32
    # update validation and robust aggregation (docs/robustness.md): an update farther than
    # max_update_norm (L2) from the global model is dropped; `aggregation` is fedavg or one
    # of Flower's robust rules, tolerating `byzantine_devices` hostile devices per round
    max_update_norm: float = _option(
        100.0, "Drop an update farther than this (L2) from the global model.", panel=PANEL_ROBUST)
    aggregation: str = _option(
        "fedavg", "fedavg | median | trimmed-mean | krum | multikrum | bulyan "
        "(docs/robustness.md).", panel=PANEL_ROBUST)
    byzantine_devices: int = _option(
        1, "Hostile devices per round a robust --aggregation must tolerate.", flag="--byzantine",
        panel=PANEL_ROBUST)
    trim_fraction: float = _option(0.2, "trimmed-mean: fraction cut from each tail.",
        panel=PANEL_ROBUST)
    # monitoring: Prometheus exporter on 127.0.0.1 (-1 = off, 0 = any free port), kept up
    # metrics_linger_s after the run ends so a scraper sees the final state
    metrics_port: int = _option(
        -1, "Serve Prometheus metrics on 127.0.0.1:PORT while the run lives (0: any free "
        "port, written to metrics.json; -1: off).", panel=PANEL_MONITORING)
    metrics_linger_s: float = _option(
        0.0, "Keep the metrics endpoint up this many seconds after the run ends.",
        panel=PANEL_MONITORING)
    # representation collection and leakage tracking (docs/representations.md): every
    # collect_every rounds (0 = off) each device uploads collect_clips representations;
    # info_bits_cap caps a device's uploaded information in bits (0: the registry's caps
    # only); a device is flagged at info_bits_alert bits (0: 90% of its cap), the fleet
    # when a leakage curve's accumulation gain PL(k) - PL(1) reaches leakage_alert
    collect_every: int = _option(
        0, "Every N rounds, collect privatized representations from the devices and track "
        "leakage (0: off; needs the registry; docs/representations.md).", panel=PANEL_COLLECTION)
    collect_clips: int = _option(
        16, "Representations each device uploads per collection (fixed batch size).",
        panel=PANEL_COLLECTION)
    info_bits_cap: float = _option(
        0.0, "Cap on each device's uploaded information, bits (0: registry caps only).",
        panel=PANEL_COLLECTION)
    info_bits_alert: float = 0.0
    leakage_alert: float = _option(
        0.1, "Flag the fleet when a leakage curve's PL(k) - PL(1) reaches this.",
        panel=PANEL_COLLECTION)
    # unlinkable collection (docs/representations.md, "Unlinkable collection"): uploads go
    # through the shuffler at `shuffler` (a running `fedmsr shuffler start`) and are stored
    # with no device, a pseudonym instead of the clip id, and the capture day coarsened to
    # windows of time_granularity_days (0: dropped); a collection is stored only when at
    # least min_crowd devices sent a batch; analyzer_key: the analyzer's private key
    # ("": <runs_dir>/analyzer.pem, created on first use)
    shuffler: str = _option(
        "", "Unlinkable collection: URL of a running `fedmsr shuffler start` "
        "(http://127.0.0.1:PORT); needs --collect-every.", panel=PANEL_COLLECTION)
    time_granularity_days: int = _option(
        7, "Unlinkable collection: capture day coarsened to windows of N days (0: dropped).",
        panel=PANEL_COLLECTION)
    min_crowd: int = _option(
        3, "Unlinkable collection: store a collection only when at least this many devices "
        "sent a batch (the shuffler must require at least as many).", panel=PANEL_COLLECTION)
    analyzer_key: str = _option(
        "", "Unlinkable collection: the analyzer's private key (default: "
        "<runs-dir>/analyzer.pem, created on first use).", panel=PANEL_COLLECTION)
    # randomized release (docs/representations.md): devices upload the posterior mean
    # clipped to release_clip plus Gaussian noise; the noise multiplier is calibrated so that
    # release_horizon uploaded clips (0: the run's planned uploads) compose to
    # release_epsilon at `delta`, frozen into release_noise_multiplier at run start
    release_epsilon: float | None = _option(
        None, "Randomized release: devices upload the clipped mean plus Gaussian noise "
        "calibrated so --release-horizon clips compose to this epsilon (0: off; needs "
        "--collect-every).", unset=0.0, panel=PANEL_COLLECTION)
    release_horizon: int = _option(
        0, "Randomized release: clips per device the epsilon covers (0: the run's planned "
        "uploads, collections x --collect-clips).", panel=PANEL_COLLECTION)
    release_clip: float = _option(
        1.0, "Randomized release: L2 norm the posterior mean is clipped to.",
        panel=PANEL_COLLECTION)
    #: Calibrated from release_epsilon at run start (0: no randomized release).
    release_noise_multiplier: float = 0.0
    # identity-invariant training (docs/representations.md): after each collection the
    # server fits a device discriminator on the stored, device-tagged representations and
    # devices train against it with this weight (0 = off)
    invariance_weight: float = _option(
        0.0, "Train the encoder to leave a device discriminator, fitted by the server on "
        "the collected representations, uncertain; weight of that term (0: off; needs "
        "--collect-every).", panel=PANEL_TRAINING)
    # real footage (docs/real-footage.md): simulate one device per distinct `device` of a
    # manifest, each training on its own rows; the server probes on an operator-owned,
    # labelled manifest of its own
    dataset: str = _option(
        "", "Simulate over a footage manifest (CSV: path, device, day or captured_at, labels): "
        "one virtual device per distinct `device` value.", panel=PANEL_DATA)
    eval_dataset: str = _option(
        "", "The server's own labelled manifest for its utility and identity probes "
        "(needed with --dataset; also for deployed devices that film real footage).",
        panel=PANEL_DATA)
    utility_label: str = _option(
        "", "With --dataset: the label column devices train on (supervised); without it, "
        "self-supervised.", panel=PANEL_DATA)
    probe_devices: int = _option(
        0, "The server's probes use the held-out clips of this many devices of the synthetic "
        "fleet, evenly spread over it and the same every round (0: every device).",
        panel=PANEL_DATA)
    runs_dir: str = _option("runs", "Where runs/<run-id>/ are written.", panel=PANEL_FEDERATION)
    run_id: str = _option("", "Run id (default: time + random suffix).", panel=PANEL_FEDERATION)
    #: Synthetic device indices the registry lets take part (None: no registry in use).
    device_indices: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # DP modes and per-device budgets (docs/privacy-accounting.md). Local DP-SGD is `dp_sgd`
    # above; central user-level DP-FedAvg: Poisson client sampling at client_sample_rate,
    # device-side update clipping to central_clip_norm, server noise central_noise_multiplier
    # (calibrated to target_epsilon over `rounds` rounds when that is set). Every release is
    # charged to the device's budget at `delta`; epsilon_cap is the cap of devices the
    # registry gives none (None: only the registry's caps).
    central_dp: bool = False
    client_sample_rate: float = _option(
        0.5, "Central DP: Poisson probability q that a device takes part in a round.",
        panel=PANEL_DP)
    central_noise_multiplier: float = _option(
        1.0, "Central DP: noise multiplier sigma (noise std / update clip).",
        flag="--central-noise", panel=PANEL_DP)
    central_clip_norm: float = _option(
        1.0, "Central DP: L2 clip C of each device's model update (on the device).",
        flag="--central-clip", panel=PANEL_DP)
    target_epsilon: float | None = _option(
        None, "Central DP: calibrate sigma so the planned rounds reach this epsilon "
        "(0: use --central-noise).", unset=0.0, panel=PANEL_DP)
    epsilon_cap: float | None = _option(
        None, "Epsilon cap of devices the registry gives none (0: registry caps only).",
        unset=0.0, panel=PANEL_DP)
    delta: float = _option(1e-5, "Delta every budget is accounted at.", panel=PANEL_DP)

    @property
    def planned_uploads(self) -> int:
        """Clips each device is asked for over the run: collections x collect_clips."""
        return (self.rounds // self.collect_every) * self.collect_clips \
            if self.collect_every else 0

    @property
    def release_horizon_clips(self) -> int:
        """The clips the release epsilon covers: release_horizon, else the planned uploads."""
        return self.release_horizon or self.planned_uploads

    @property
    def dp_mode(self) -> str:
        """none | local | central | both (`fedmsr run --dp`)."""
        return DP_MODES[int(self.dp_sgd) + 2 * int(self.central_dp)]

    def validate(self) -> RunConfig:
        """Raise :class:`ConfigError` for the first bad field; return self when all good."""
        _positive_int(self, "devices", "rounds", "days", "clips_per_day", "latent_dim", "width",
                      "local_epochs", "batch_size", "min_train_devices", "eval_every")
        if not is_int(self.probe_devices) or not 0 <= self.probe_devices:
            raise ConfigError("probe_devices", f"must be an integer >= 0, got "
                              f"{self.probe_devices!r}")
        if self.probe_devices and self.eval_dataset:
            raise ConfigError("probe_devices", "chooses devices of the synthetic fleet; with "
                              "--eval-dataset the server probes on that manifest's clips")
        _at_least(self, "eval_days", 2, "the server probes fit on one held-out day and test on another")
        if not 8 <= self.frames <= 16:
            raise ConfigError("frames", f"must be between 8 and 16, got {self.frames}")
        if self.image_size not in IMAGE_SIZES:
            raise ConfigError("image_size", f"must be one of {IMAGE_SIZES}, got {self.image_size}")
        if self.utility not in UTILITIES:
            raise ConfigError("utility", f"must be one of {', '.join(UTILITIES)}, got {self.utility!r}")
        if not self.beta >= 0:
            raise ConfigError("beta", f"must be >= 0, got {self.beta}")
        if not finite_positive(self.learning_rate):
            raise ConfigError("learning_rate", f"must be a finite number > 0, "
                              f"got {self.learning_rate!r}")
        if self.dp_sgd and not finite_positive(self.noise_multiplier):
            raise ConfigError("noise_multiplier", f"must be a finite number > 0 with DP-SGD, "
                              f"got {self.noise_multiplier}")
        if self.dp_sgd and not finite_positive(self.clip_norm):
            raise ConfigError("clip_norm", f"must be a finite number > 0 with DP-SGD, "
                              f"got {self.clip_norm}")
        if not 0 < self.fraction_train <= 1:
            raise ConfigError("fraction_train", f"must be in (0, 1], got {self.fraction_train}")
        if self.min_train_devices > self.devices:
            raise ConfigError("min_train_devices",
                              f"{self.min_train_devices} is more than the fleet's {self.devices} devices")
        for name in ("round_timeout_s", "fleet_wait_s", "reply_timeout_s"):
            if not finite_positive(getattr(self, name)):
                raise ConfigError(name, f"must be a finite number > 0, got {getattr(self, name)}")
        if not is_int(self.metrics_port) or not -1 <= self.metrics_port <= 65535:
            raise ConfigError("metrics_port", f"must be -1 (off), 0 (any free port) or a port "
                              f"1..65535, got {self.metrics_port!r}")
        if not 0 <= self.metrics_linger_s <= 86400:
            raise ConfigError("metrics_linger_s", f"must be between 0 and 86400 s, "
                              f"got {self.metrics_linger_s}")
        if self.run_id and not _RUN_ID.match(self.run_id):
            raise ConfigError("run_id", f"{self.run_id!r} is not a valid run id "
                              "(letters, digits, '.', '_', '-'; at most 64 characters)")
        if self.secure_aggregation:
            _validate_secure_aggregation(self)
        _validate_robustness(self)
        _validate_dp(self)
        _validate_collection(self)
        _validate_dataset(self)
        return self

    # -- (de)serialisation -------------------------------------------------------------

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any], source: str) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown setting in {source}")
        try:
            return cls(**dict(data)).validate()
        except TypeError as exc:  # wrong type for a field that dataclasses cannot coerce
            raise ConfigError("config", f"{source}: {exc}") from exc

    @classmethod
    def from_user_config(cls, user_config: Mapping[str, Any]) -> RunConfig:
        """Build from Flower's `context.run_config` (hyphenated keys of `[tool.flwr.app.config]`)."""
        data: dict[str, Any] = {}
        for key, value in user_config.items():
            name = _FIELD_OF_USER_KEY.get(key, key.replace("-", "_"))
            data[name] = value
        return cls.from_json_dict(_coerce_types(data), "[tool.flwr.app.config]")

    def devices_evaluate(self, server_round: int) -> bool:
        """Whether this round's trained devices evaluate the new model (`--eval-every`)."""
        return server_round % self.eval_every == 0 or server_round == self.rounds

    def with_run_id(self, run_id: str) -> RunConfig:
        return dataclasses.replace(self, run_id=run_id).validate()

    def run_dir(self) -> Path:
        if not self.run_id:
            raise ConfigError("run_id", "is empty; the launcher assigns one before the run starts")
        return Path(self.runs_dir) / self.run_id

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError("run_id", f"no run configuration at {path}; is the run id right?") from None
        except json.JSONDecodeError as exc:
            raise ConfigError("run.json", f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise ConfigError("run.json", f"{path} must hold a JSON object")
        return cls.from_json_dict(data, str(path))


#: `[tool.flwr.app.config]` keys that follow Flower's naming, not the field's.
_FIELD_OF_USER_KEY = {"num-server-rounds": "rounds", "num-devices": "devices"}


def user_config_key(field_name: str) -> str:
    """The `[tool.flwr.app.config]` key of a RunConfig field (`num-server-rounds` for
    `rounds`, Flower's name; otherwise the field's name, hyphenated)."""
    for key, name in _FIELD_OF_USER_KEY.items():
        if name == field_name:
            return key
    return field_name.replace("_", "-")


def _coerce_types(data: dict[str, Any]) -> dict[str, Any]:
    """Flower's UserConfig has int/float/bool/str only: turn ints into floats where wanted."""
    float_fields = {f.name for f in dataclasses.fields(RunConfig) if f.type == "float"}
    return {k: float(v) if k in float_fields and is_int(v) else v
            for k, v in data.items()}


def finite_positive(value: object) -> bool:
    """A finite number > 0 (not inf, not NaN, not a bool)."""
    return is_finite(value) and value > 0


def _positive_int(cfg: RunConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not is_int(value) or value < 1:
            raise ConfigError(name, f"must be a positive integer, got {value!r}")


def _at_least(cfg: RunConfig, name: str, minimum: int, why: str) -> None:
    value = getattr(cfg, name)
    if not is_int(value) or value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum} ({why}), got {value!r}")


def _validate_secure_aggregation(cfg: RunConfig) -> None:
    """Neighbours k even (or n-1), threshold a strict majority of k, an encoding that fits."""
    from privacy.secagg.encoding import MAX_BITS, MIN_BITS, EncodingSpec
    from privacy.secagg.errors import EncodingError

    n, k, t = cfg.devices, cfg.secagg_neighbours, cfg.secagg_threshold
    if n < 2:
        raise ConfigError("devices", "secure aggregation needs at least 2 devices")
    if k and not (k == n - 1 or (k % 2 == 0 and 2 <= k < n)):
        raise ConfigError("secagg_neighbours", f"must be even and in 2..{n - 1}, or "
                          f"{n - 1} (complete graph), got {k}; or 0 for the default")
    c = cfg.secagg_max_colluding
    if not 0 <= c < n:
        raise ConfigError("secagg_max_colluding", f"must be in 0..{n - 1}, got {c}")
    if k and c >= k:
        raise ConfigError("secagg_max_colluding", f"must be below --neighbours {k}, got {c}")
    if t and k and not (k + c) // 2 + 1 <= t <= k:
        raise ConfigError("secagg_threshold", f"must be in {(k + c) // 2 + 1}..{k} (more than "
                          f"(--neighbours {k} + --max-colluding {c}) / 2), got {t}; or 0 for "
                          "the default")
    if t < 0 or (t and not k and t > n - 1):
        raise ConfigError("secagg_threshold", f"must be between 1 and {n - 1}, got {t}; or 0")
    if not cfg.secagg_clip > 0:
        raise ConfigError("secagg_clip", f"must be > 0, got {cfg.secagg_clip}")
    if not MIN_BITS <= cfg.secagg_mod_bits <= MAX_BITS:
        raise ConfigError("secagg_mod_bits", f"must be in {MIN_BITS}..{MAX_BITS}, "
                          f"got {cfg.secagg_mod_bits}")
    try:  # every device's weight (its #clips) summed over the fleet must fit the modulus
        EncodingSpec(cfg.secagg_clip, cfg.secagg_mod_bits, cfg.clips_per_day * cfg.days, n)
    except EncodingError as exc:
        raise ConfigError("secagg_mod_bits", str(exc)) from None


def _validate_robustness(cfg: RunConfig) -> None:
    """A finite norm bound; a known aggregation rule that the fleet is big enough for and
    that the other settings allow (secure aggregation reveals only the sum)."""
    import math

    from strategies.robust_aggregation import AGGREGATIONS, required_updates

    if not (isinstance(cfg.max_update_norm, (int, float)) and 0 < cfg.max_update_norm < math.inf):
        raise ConfigError("max_update_norm", f"must be a finite number > 0, "
                          f"got {cfg.max_update_norm!r}")
    if cfg.aggregation not in AGGREGATIONS:
        raise ConfigError("aggregation", f"must be one of {', '.join(AGGREGATIONS)}, "
                          f"got {cfg.aggregation!r}")
    _at_least(cfg, "byzantine_devices", 0, "hostile devices a robust rule must tolerate")
    if not 0 <= cfg.trim_fraction < 0.5:
        raise ConfigError("trim_fraction", f"must be in [0, 0.5), got {cfg.trim_fraction}")
    if cfg.aggregation == "fedavg":
        return
    if cfg.secure_aggregation:
        raise ConfigError("aggregation", f"{cfg.aggregation} needs each device's update, but "
                          "secure aggregation reveals only their sum; use --aggregation fedavg "
                          "with --secure-aggregation (bound updates on the devices instead)")
    if cfg.aggregation == "trimmed-mean" and cfg.byzantine_devices and not cfg.trim_fraction:
        raise ConfigError("trim_fraction", "is 0: a trimmed mean that trims nothing tolerates "
                          "no hostile device; use 0 < trim_fraction < 0.5")
    needed = required_updates(cfg.aggregation, cfg.byzantine_devices, cfg.trim_fraction)
    per_round = max(math.ceil(cfg.fraction_train * cfg.devices), cfg.min_train_devices)
    if min(per_round, cfg.devices) < needed:
        raise ConfigError("byzantine_devices", f"{cfg.aggregation} tolerating "
                          f"{cfg.byzantine_devices} hostile device(s) needs at least {needed} "
                          f"updates per round, but a round samples {min(per_round, cfg.devices)}; "
                          "sample more devices or lower --byzantine")


def _validate_dp(cfg: RunConfig) -> None:
    """Budget figures in range; central DP settings that the accountant and the fixed-
    denominator average can use (docs/privacy-accounting.md)."""
    if not (finite_positive(cfg.delta) and cfg.delta < 1):
        raise ConfigError("delta", f"must be in (0, 1) (typically below 1 / clips per "
                          f"device), got {cfg.delta!r}")
    if cfg.epsilon_cap is not None and not finite_positive(cfg.epsilon_cap):
        raise ConfigError("epsilon_cap", f"must be a finite epsilon > 0 (or unset: only the "
                          f"registry's per-device caps), got {cfg.epsilon_cap!r}")
    if cfg.target_epsilon is not None and not cfg.central_dp:
        raise ConfigError("target_epsilon", "calibrates the central DP noise: use it with "
                          "--dp central or --dp both")
    if not cfg.central_dp:
        return
    if not (finite_positive(cfg.client_sample_rate)
            and cfg.client_sample_rate <= 1):
        raise ConfigError("client_sample_rate", f"must be in (0, 1] (the Poisson probability "
                          f"that a device takes part in a round), got {cfg.client_sample_rate!r}")
    for name in ("central_noise_multiplier", "central_clip_norm"):
        if not finite_positive(getattr(cfg, name)):
            raise ConfigError(name, f"must be a finite number > 0 with central DP, "
                              f"got {getattr(cfg, name)!r}")
    if cfg.target_epsilon is not None and not finite_positive(cfg.target_epsilon):
        raise ConfigError("target_epsilon", f"must be a finite epsilon > 0, "
                          f"got {cfg.target_epsilon!r}")
    if cfg.fraction_train != 1.0:
        raise ConfigError("fraction_train", "central DP samples devices by Poisson sampling "
                          "at --client-sample-rate; leave --fraction-train at 1")
    if getattr(cfg, "aggregation", "fedavg") != "fedavg":
        raise ConfigError("aggregation", "central DP adds noise to the sum of clipped "
                          "updates; use --aggregation fedavg")


def _validate_collection(cfg: RunConfig) -> None:
    """Collection cadence within the run, a batch size the upload format holds, caps >= 0."""
    every = cfg.collect_every
    if not is_int(every) or not 0 <= every <= cfg.rounds:
        raise ConfigError("collect_every", f"must be 0 (off) or a round count in "
                          f"1..{cfg.rounds} (--rounds), got {every!r}")
    clips = cfg.collect_clips
    if not is_int(clips) or not 1 <= clips <= 1024:
        raise ConfigError("collect_clips", f"must be an integer in 1..1024, got {clips!r}")
    for name in ("info_bits_cap", "info_bits_alert"):
        if not 0 <= getattr(cfg, name) < float("inf"):
            raise ConfigError(name, f"must be a finite number >= 0 (0: none), "
                              f"got {getattr(cfg, name)}")
    if not 0 < cfg.leakage_alert <= 1:
        raise ConfigError("leakage_alert", f"must be in (0, 1], got {cfg.leakage_alert}")
    weight = cfg.invariance_weight
    if not is_number(weight) or not 0 <= weight < float("inf"):
        raise ConfigError("invariance_weight", f"must be a finite number >= 0, got {weight!r}")
    if weight and not every:
        raise ConfigError("invariance_weight", "the device discriminator is fitted on collected "
                          "representations: turn collection on with --collect-every N")
    if weight and cfg.shuffler:
        raise ConfigError("invariance_weight", "the device discriminator is fitted on "
                          "device-tagged representations, and with --shuffler the store has none "
                          "(unlinkable): run without one of the two")
    _validate_release(cfg)
    _validate_unlinkable(cfg)


def _validate_release(cfg: RunConfig) -> None:
    """Randomized release: an epsilon > 0 with collection on, a clip norm > 0, a horizon
    that covers at least the run's own uploads."""
    if cfg.release_epsilon is None:
        if cfg.release_noise_multiplier != 0:
            raise ConfigError("release_noise_multiplier", "is calibrated from "
                              "release_epsilon; set that instead")
        return
    if not finite_positive(cfg.release_epsilon):
        raise ConfigError("release_epsilon", f"must be a finite epsilon > 0 (or 0: off), "
                          f"got {cfg.release_epsilon!r}")
    if cfg.collect_every == 0:
        raise ConfigError("release_epsilon", "randomizes the representations devices upload: "
                          "turn collection on with --collect-every N")
    if not finite_positive(cfg.release_clip):
        raise ConfigError("release_clip", f"must be a finite L2 norm > 0, got "
                          f"{cfg.release_clip!r}")
    horizon = cfg.release_horizon
    if not is_int(horizon) or horizon < 0:
        raise ConfigError("release_horizon", f"must be 0 (the run's planned uploads) or a "
                          f"clip count >= 1, got {horizon!r}")
    if 0 < horizon < cfg.planned_uploads:
        raise ConfigError("release_horizon", f"{horizon} clips is less than this run's "
                          f"planned uploads ({cfg.planned_uploads} = "
                          f"{cfg.rounds // cfg.collect_every} collections x "
                          f"{cfg.collect_clips} clips): the run would pass its own epsilon")
    if not is_finite(cfg.release_noise_multiplier) or cfg.release_noise_multiplier < 0:
        raise ConfigError("release_noise_multiplier", f"must be a finite number >= 0, got "
                          f"{cfg.release_noise_multiplier!r}")


def _validate_unlinkable(cfg: RunConfig) -> None:
    """The shuffler's URL, a collection to route through it, a granularity and a crowd."""
    from privacy.shuffle.records import MAX_GRANULARITY_DAYS

    granularity = cfg.time_granularity_days
    if not is_int(granularity) or not 0 <= granularity <= MAX_GRANULARITY_DAYS:
        raise ConfigError("time_granularity_days", f"must be 0 (drop capture time) or a "
                          f"window of 1..{MAX_GRANULARITY_DAYS} days, got {granularity!r}")
    if not is_int(cfg.min_crowd) or cfg.min_crowd < 2:
        raise ConfigError("min_crowd", f"must be an integer >= 2 (a crowd of one links every "
                          f"record to its sender), got {cfg.min_crowd!r}")
    if not cfg.shuffler:
        return
    if not re.match(r"^http://[^/\s]+:\d+/?$", cfg.shuffler):
        raise ConfigError("shuffler", f"must be http://HOST:PORT of `fedmsr shuffler start`, "
                          f"got {cfg.shuffler!r}")
    if cfg.collect_every == 0:
        raise ConfigError("shuffler", "routes representation collection through the "
                          "shuffler: turn collection on with --collect-every N")


def _validate_dataset(cfg: RunConfig) -> None:
    """Real footage. `eval_dataset`: the server's probes read that manifest (which must
    hold the probe's label and two days at least). `dataset`: a simulation with one device
    per `device` value of the manifest; it needs an eval manifest, and its utility label
    (if any) must be in both with two values at least."""
    from privacy.footage_manifest import ManifestError, read_manifest

    if cfg.utility_label and not cfg.dataset:
        raise ConfigError("utility_label", "names a column of a footage manifest: add "
                          "--dataset MANIFEST")
    if cfg.dataset and not cfg.eval_dataset:
        raise ConfigError("eval_dataset", "a run over --dataset needs the server's own "
                          "labelled clips for its probes: --eval-dataset MANIFEST")
    manifests: dict[str, Manifest] = {}
    for name in ("dataset", "eval_dataset"):
        if getattr(cfg, name):
            try:
                manifests[name] = read_manifest(getattr(cfg, name))
            except ManifestError as exc:
                raise ConfigError(name, str(exc)) from None
    if not manifests:
        return
    label = cfg.utility_label
    if cfg.dataset:
        _validate_simulated_fleet(cfg, manifests["dataset"])
    from fl_server.eval_set import eval_days_split, probe_label

    evaluated = manifests["eval_dataset"]
    if probe_label(label) not in evaluated.label_columns:
        raise ConfigError("eval_dataset", f"{cfg.eval_dataset} has no {probe_label(label)!r} "
                          "column for the server's utility probe")
    try:
        eval_days_split(evaluated)
    except ValueError as exc:
        raise ConfigError("eval_dataset", str(exc)) from None


def _validate_simulated_fleet(cfg: RunConfig, manifest: Manifest) -> None:
    """A --dataset simulation: one device per manifest device, a utility label it holds."""
    label = cfg.utility_label
    devices = manifest.devices()
    if cfg.devices != len(devices):
        raise ConfigError("devices", f"the manifest {cfg.dataset} has {len(devices)} devices, "
                          f"the run {cfg.devices}: drop --devices (it follows the manifest)")
    if label:
        if label not in manifest.label_columns:
            raise ConfigError("utility_label", f"{label!r} is not a label column of "
                              f"{cfg.dataset} (its labels: "
                              f"{', '.join(manifest.label_columns) or 'none'})")
        if len(manifest.vocabulary.columns[label]) < 2:
            raise ConfigError("utility_label", f"{label!r} takes fewer than two values in "
                              f"{cfg.dataset}: nothing to learn")
    elif cfg.utility != "ssl":
        raise ConfigError("utility", f"--utility {cfg.utility} needs labels: name the column "
                          "with --utility-label (without one a --dataset run is self-supervised)")
