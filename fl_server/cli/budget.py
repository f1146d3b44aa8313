"""`fedmsr budget …`: what a DP plan costs before it runs, and what devices have spent.

`fedmsr budget show [DEVICE] [--delta D] [--json]` reads the privacy ledger
(`fl_server.privacy_ledger`, every kind: local-dp-sgd, central-dp-fedavg,
randomized-release): per device the reported epsilon (PLD over every reserved or
committed release, never below the exact value), the delta it is reported at (the device's
own delta cap when it has one, else `--delta`), its cap, rounds charged and the last event.
`--json` adds every event (kind, run, round, q, sigma, steps, status, timestamps) so an
auditor can recompute epsilon with an accountant of their own.

`fedmsr budget plan --rounds R --sample-rate Q --steps-per-round S (--noise X |
--target-epsilon E) --delta D [--json]` prints the plan's reported epsilon (PLD, never
below the exact value) and its RDP bound (what enforcement compares to a cap); with
`--target-epsilon` it first calibrates the noise multiplier that reaches the target.

`fedmsr budget plan --kind randomized-release --clips N (--noise X | --release-epsilon E)
[--release-clip C] [--latent-dim D]` prices uploads through the randomized release
(`privacy.release_mechanism`): N Gaussian mechanisms (q = 1, one step per clip), the
noise std 2*C*sigma and, with D, the information bound per clip.
Bad input is one line on stderr naming the option, exit 2, and nothing else printed.
"""

from __future__ import annotations

import json
import math
from typing import Annotated

import typer

from fl_server import privacy_ledger
from fl_server.cli.errors import fail
from fl_server.registry import db
from fl_server.registry.devices import find_device
from privacy.accounting import calibrate_noise, plan_cost
from privacy.accounting.events import EventKind
from privacy.release_mechanism import GaussianRelease, calibrate_release

budget_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                         help="Per-device DP budgets: what a plan costs, what was spent.")


def _kind(kind: str) -> EventKind:
    try:
        return EventKind(kind)
    except ValueError:
        fail("--kind", f"must be one of {', '.join(k.value for k in EventKind)}, got {kind!r}")


def _check_common(noise: float | None, target: float | None, delta: float,
                  target_flag: str = "--target-epsilon") -> None:
    if (noise is None) == (target is None):
        fail(f"--noise/{target_flag}", "give exactly one of them")
    if noise is not None and not (math.isfinite(noise) and noise > 0):
        fail("--noise", f"must be a finite noise multiplier > 0, got {noise}")
    if target is not None and not (math.isfinite(target) and target > 0):
        fail(target_flag, f"must be a finite epsilon > 0, got {target}")
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        fail("--delta", f"must be in (0, 1) (typically < 1/dataset size), got {delta}")


def _validate(rounds: int | None, sample_rate: float | None, steps: int, noise: float | None,
              target: float | None, delta: float) -> tuple[int, float]:
    """A DP-SGD / DP-FedAvg plan: (rounds, q), both required."""
    if rounds is None:
        fail("--rounds", "is required (rounds the device takes part in)")
    if rounds < 1:
        fail("--rounds", f"must be >= 1, got {rounds}")
    if sample_rate is None:
        fail("--sample-rate", "is required (batch / clips, or the client sample rate)")
    if not (math.isfinite(sample_rate) and 0.0 < sample_rate <= 1.0):
        fail("--sample-rate", f"must be in (0, 1] (batch / dataset size), got {sample_rate}")
    if steps < 1:
        fail("--steps-per-round", f"must be >= 1, got {steps}")
    _check_common(noise, target, delta)
    return rounds, sample_rate


def _release_plan(clips: int | None, noise: float | None, target: float | None,
                  delta: float, clip_norm: float, latent_dim: int | None,
                  given: dict[str, object]) -> tuple[float, dict[str, object]]:
    """A randomized-release plan: (sigma, what the result adds about the mechanism)."""
    wrong = [flag for flag, value in given.items() if value is not None]
    if wrong:
        fail(wrong[0], "a randomized-release plan counts --clips (q = 1, one step per "
             "released clip), not rounds or sample rates: drop it")
    if clips is None or clips < 1:
        fail("--clips", f"must be the released clips over the horizon, >= 1, got {clips}")
    _check_common(noise, target, delta, "--release-epsilon")
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        fail("--release-clip", f"must be a finite L2 norm > 0, got {clip_norm}")
    if latent_dim is not None and latent_dim < 1:
        fail("--latent-dim", f"must be >= 1, got {latent_dim}")
    if noise is not None:
        release = GaussianRelease(clip_norm, noise)
    else:
        assert target is not None  # _check_common: exactly one of the two
        release = calibrate_release(target, delta, clips, clip_norm)
    extra: dict[str, object] = {"clips": clips, "release_clip": clip_norm,
                                "noise_std": release.std}
    if latent_dim is not None:
        extra.update(latent_dim=latent_dim,
                     information_bits_per_clip=release.information_bits(latent_dim))
    return release.noise_multiplier, extra


@budget_app.command("plan")
def plan(
    rounds: Annotated[int | None, typer.Option(help="Rounds the device takes part in.")]
    = None,
    sample_rate: Annotated[float | None, typer.Option(
        help="Poisson sample rate q per step (local: batch / clips; central: client rate).")]
    = None,
    steps_per_round: Annotated[int, typer.Option(
        help="Noisy steps per round (local DP-SGD steps; 1 for central DP-FedAvg).")] = 1,
    noise: Annotated[float | None, typer.Option(help="Noise multiplier sigma.")] = None,
    target_epsilon: Annotated[float | None, typer.Option(
        help="Calibrate sigma so the plan reaches this epsilon.")] = None,
    delta: Annotated[float, typer.Option(help="The delta epsilon is reported at.")] = 1e-5,
    kind: Annotated[str, typer.Option(
        help="local-dp-sgd | central-dp-fedavg | randomized-release.")]
    = EventKind.LOCAL_DP_SGD.value,
    clips: Annotated[int | None, typer.Option(
        help="randomized-release: clips a device uploads over the horizon.")] = None,
    release_epsilon: Annotated[float | None, typer.Option(
        help="randomized-release: calibrate sigma so --clips uploads reach this epsilon.")]
    = None,
    release_clip: Annotated[float, typer.Option(
        help="randomized-release: L2 norm C the posterior mean is clipped to.")] = 1.0,
    latent_dim: Annotated[int | None, typer.Option(
        help="randomized-release: latent size D, for the information bound per clip.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """What a plan costs in epsilon, or the sigma for a target.

    Epsilon of ROUNDS x STEPS Poisson-subsampled Gaussian steps, or of CLIPS randomized
    releases (--kind randomized-release); or the sigma that reaches a target epsilon."""
    event_kind = _kind(kind)
    extra: dict[str, object] = {}
    if event_kind is EventKind.RANDOMIZED_RELEASE:
        sigma, extra = _release_plan(
            clips, noise, release_epsilon, delta, release_clip, latent_dim,
            {"--rounds": rounds, "--sample-rate": sample_rate,
             "--target-epsilon": target_epsilon,
             "--steps-per-round": None if steps_per_round == 1 else steps_per_round})
        assert clips is not None  # _release_plan: >= 1
        rounds, sample_rate, steps_per_round = 1, 1.0, clips
        target_epsilon = release_epsilon
    else:
        wrong = [flag for flag, value in (("--clips", clips),
                                          ("--release-epsilon", release_epsilon),
                                          ("--latent-dim", latent_dim)) if value is not None]
        if wrong:
            fail(wrong[0], "only a --kind randomized-release plan takes it")
        rounds, sample_rate = _validate(rounds, sample_rate, steps_per_round, noise,
                                        target_epsilon, delta)
        if noise is not None:
            sigma = noise
        else:
            assert target_epsilon is not None  # _validate: exactly one of the two
            sigma = calibrate_noise([(sample_rate, steps_per_round)] * rounds, target_epsilon,
                                    delta)
    cost = plan_cost(rounds, sample_rate, sigma, steps_per_round, delta, event_kind)
    result = {
        "rounds": rounds, "sample_rate": sample_rate, "steps_per_round": steps_per_round,
        "kind": event_kind.value, "noise_multiplier": sigma, "calibrated": noise is None,
        "target_epsilon": target_epsilon, "delta": delta,
        "epsilon": cost.epsilon, "epsilon_rdp": cost.epsilon_rdp,
        "accountant": "pld (reported); rdp (enforcement bound)", **extra,
    }
    if as_json:
        print(json.dumps(result, indent=2))
        return
    if noise is None:
        print(f"calibrated noise multiplier: {sigma:.4f} (target epsilon {target_epsilon:g})")
    if event_kind is EventKind.RANDOMIZED_RELEASE:
        print(f"plan: {steps_per_round} released clips, Gaussian on the mean clipped to "
              f"C={release_clip:g}, sigma={sigma:.4g} (noise std {extra['noise_std']:.4g}), "
              f"{event_kind.value}")
        if latent_dim is not None:
            print(f"information: at most {extra['information_bits_per_clip']:.4g} bits per "
                  f"clip (D={latent_dim})")
    else:
        print(f"plan: {rounds} rounds x {steps_per_round} steps, q={sample_rate:g}, "
              f"sigma={sigma:.4g}, {event_kind.value}")
    print(f"epsilon: {cost.epsilon:.4f} at delta={delta:g} (reported, PLD)")
    print(f"epsilon (RDP bound, used for enforcement): {cost.epsilon_rdp:.4f}")


def _state_dict(state: privacy_ledger.BudgetState) -> dict[str, object]:
    last = state.last_event
    return {"id": state.device_id, "name": state.name, "epsilon": state.epsilon,
            "epsilon_rdp": state.epsilon_rdp, "delta": state.delta,
            "epsilon_cap": state.epsilon_cap, "rounds": state.rounds,
            "event_count": len(state.events),
            "last_event": last.to_json_dict() if last else None,
            "events": [e.to_json_dict() for e in state.events]}


def _last(state: privacy_ledger.BudgetState) -> str:
    e = state.last_event
    if e is None:
        return "-"
    return f"{e.run_id}#{e.round_number} {e.kind} {e.status} {e.reserved_at:%Y-%m-%d %H:%M}"


@budget_app.command("show")
def show(
    device: Annotated[str | None, typer.Argument(
        help="Device name or id (default: every device).")] = None,
    delta: Annotated[float, typer.Option(
        help="Delta for devices without a delta cap of their own.")] = 1e-5,
    as_json: Annotated[bool, typer.Option(
        "--json", help="JSON with every event, for an independent recomputation.")] = False,
) -> None:
    """Epsilon spent per device, with delta, cap and rounds.

    The reported epsilon (PLD), delta, cap, rounds and the last event of each device.
    """
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        fail("--delta", f"must be in (0, 1), got {delta}")
    url = db.resolve_url()
    ids = None
    if device is not None:
        with db.session_scope(url) as session:
            ids = [find_device(session, device).id]
    states = privacy_ledger.budget_states(url, delta, ids)
    if as_json:
        print(json.dumps({"accountant": "pld (reported, pessimistic, within 2% of exact)",
                          "devices": [_state_dict(s) for s in states]}, indent=2))
        return
    print(f"{'device':<20} {'epsilon':>9} {'delta':>8} {'cap':>7} {'rounds':>6} "
          f"{'events':>6}  last event")
    for s in states:
        cap = f"{s.epsilon_cap:g}" if s.epsilon_cap is not None else "-"
        print(f"{s.name:<20} {s.epsilon:>9.4f} {s.delta:>8.1e} {cap:>7} {s.rounds:>6} "
              f"{len(s.events):>6}  {_last(s)}")
