"""`fedmsr run --dry-run`, and the budget check before a DP run's first round.

Both read :mod:`fl_server.budget_forecast`. The dry run prints a table (one row per
device the run would use) on stdout and warnings on stderr; the check before a real run
prints only the warnings, each once: DP-SGD at q = 1 (a batch as large as a device's
clips: no subsampling amplification), and devices whose planned charges would pass their
cap. It does not refuse the run: the ledger checks every round's charges against every
cap before a message is sent (a device that cannot afford a round is left out; too few
left and the run stops cleanly, exit 3), so refusing here would only second-guess it.
"""

from __future__ import annotations

import sys

from fl_server.budget_forecast import DeviceForecast, Forecast, charges_budgets, forecast
from fl_server.config import RunConfig


def print_dry_run(cfg: RunConfig, *, deployed: bool = False) -> None:
    """The forecast as a table; nothing is started or written."""
    found = forecast(cfg, deployed=deployed)
    print(f"dry run: {len(found.devices) or cfg.devices} devices, {cfg.rounds} rounds; "
          "nothing was started or written")
    if not charges_budgets(cfg):
        print("no DP: the run charges no device's privacy budget")
        return
    print(f"charges per device: {_charges(cfg, found)}")
    print(f"{'device':<20} {'clips':>6} {'q':>7} {'steps':>6} {'epsilon':>9} {'spent':>8} "
          f"{'cap':>7} {'remaining':>9} {'after':>9} {'delta':>8}  verdict")
    for d in found.devices:
        local = d.local
        print(f"{d.name:<20} {_opt(local.clips if local else None):>6} "
              f"{_opt(local.sample_rate if local else None, '.4g'):>7} "
              f"{_opt(local.steps_per_round * cfg.rounds if local else None):>6} "
              f"{_opt(d.epsilon, '.4f'):>9} {d.spent:>8.4f} {_opt(d.cap, 'g'):>7} "
              f"{_opt(d.remaining, '.4f'):>9} {_opt(d.epsilon_after, '.4f'):>9} "
              f"{d.delta:>8.1e}  {_verdict(d)}")
    _warn(cfg, found)


def warn_before_run(cfg: RunConfig, *, deployed: bool = False) -> None:
    """Before a DP run's first round: the dry run's warnings, once, on stderr."""
    if charges_budgets(cfg):
        _warn(cfg, forecast(cfg, deployed=deployed, exact=False))


def _charges(cfg: RunConfig, found: Forecast) -> str:
    parts = []
    if cfg.dp_sgd:
        known = next((d.local for d in found.devices if d.local is not None), None)
        if known is None:
            parts.append(f"local DP-SGD sigma={cfg.noise_multiplier:g}, q = --batch-size "
                         f"{cfg.batch_size} / the clips each device counts at check-in "
                         "(real footage: not known before the run)")
        else:
            parts.append(f"local DP-SGD sigma={cfg.noise_multiplier:g}, {cfg.rounds} rounds "
                         f"x {known.steps_per_round} steps at q={known.sample_rate:.4g} "
                         f"(batch {cfg.batch_size} of {known.clips} clips)")
    if cfg.central_dp:
        parts.append(f"central DP sigma={cfg.central_noise_multiplier:.4g}, {cfg.rounds} "
                     f"rounds x 1 step at q={cfg.client_sample_rate:g}")
    if cfg.release_noise_multiplier > 0 and found.collections:
        parts.append(f"randomized release sigma={cfg.release_noise_multiplier:.4g}, "
                     f"{found.collections} collections x {cfg.collect_clips} clips at q=1")
    return "; ".join(parts)


def _warn(cfg: RunConfig, found: Forecast) -> None:
    flat = found.without_amplification
    if flat:
        clips = min(d.local.clips for d in flat if d.local is not None)
        print(f"warning: --batch-size {cfg.batch_size} >= the {clips} clips of "
              f"{len(flat)} device(s): DP-SGD samples at q = 1, no subsampling "
              f"amplification; lower --batch-size below {clips}", file=sys.stderr)
    over = found.over_cap
    if over:
        first = over[0]
        after = "" if first.epsilon_after is None else f" epsilon {first.epsilon_after:.4f}"
        print(f"warning: {len(over)} of {len(found.devices)} device(s) would go over their "
              f"epsilon cap during this run ({first.name}:{after} after the run, cap "
              f"{first.cap:g}); the ledger leaves a device out of any round it cannot "
              "afford, and the run stops (exit 3) when fewer than --min-devices can",
              file=sys.stderr)


def _verdict(d: DeviceForecast) -> str:
    if d.epsilon is None:
        return "local epsilon unknown (clips counted at check-in)"
    if d.cap is None:
        return "no cap"
    return "over cap" if d.passes_cap else "fits"


def _opt(value: float | int | None, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)
