"""DP events as plain data, and histories (sequences of them) that compose by concatenation.

Modelled on dp-accounting's ``dp_event.py``: every release fedmsr makes is a
``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`` self-composed ``steps`` times. The
mechanism itself is :class:`privacy.dp_event.PoissonGaussianEvent` (what a device's trainer
reports); :class:`DpEvent` adds the *kind* of release, which the accountant does not need
but an auditor does:

* ``local-dp-sgd`` — example-level DP-SGD on one device: ``q`` is the device's own
  per-step sampling rate of its clips, ``steps`` its optimizer steps in the round.
* ``central-dp-fedavg`` — user-level DP-FedAvg: ``q`` is the Poisson client-sampling rate,
  ``sigma`` the server noise relative to the client clipping norm, one step per round.
* ``randomized-release`` — a device's upload of representations through the Gaussian
  mechanism (``privacy.release_mechanism``): ``q = 1``, ``sigma`` the noise relative to the
  replace-one sensitivity, one step per released clip.

All kinds are charged to the same per-device (epsilon, delta) budget: a user-level
guarantee implies the same example-level guarantee, so composing them as example-level
releases is valid (and conservative).

Composition of heterogeneous events is order-free (the accountants are), so a history is
just a tuple of events; concatenating histories composes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from privacy.checks import is_finite, is_int
from privacy.dp_event import PoissonGaussianEvent


class EventKind(str, Enum):
    """Which mechanism released the information (for the audit trail; same maths)."""

    LOCAL_DP_SGD = "local-dp-sgd"
    CENTRAL_DP_FEDAVG = "central-dp-fedavg"
    RANDOMIZED_RELEASE = "randomized-release"


_FIELDS = ("kind", "sample_rate", "noise_multiplier", "steps")


@dataclass(frozen=True)
class DpEvent:
    """``steps`` x Poisson-subsampled (rate ``sample_rate``) Gaussian, of a given kind.

    Unlike :class:`PoissonGaussianEvent`, ``steps`` must be >= 1: an event that released
    nothing is not recorded (see :func:`as_events`, which drops such mechanisms).
    """

    sample_rate: float
    noise_multiplier: float
    steps: int
    kind: EventKind = EventKind.LOCAL_DP_SGD

    def __post_init__(self) -> None:
        n: object = self.steps
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        if not is_int(n) or n < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        # Reuse the mechanism's validation (sample_rate in (0, 1], noise_multiplier > 0).
        mech = PoissonGaussianEvent(self.sample_rate, self.noise_multiplier, n)
        object.__setattr__(self, "sample_rate", mech.sample_rate)
        object.__setattr__(self, "noise_multiplier", mech.noise_multiplier)
        object.__setattr__(self, "steps", mech.steps)
        try:
            object.__setattr__(self, "kind", EventKind(self.kind))
        except ValueError:
            kinds = ", ".join(k.value for k in EventKind)
            raise ValueError(f"kind must be one of {kinds}, got {self.kind!r}") from None

    @property
    def mechanism(self) -> PoissonGaussianEvent:
        return PoissonGaussianEvent(self.sample_rate, self.noise_multiplier, self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "sample_rate": self.sample_rate,
                "noise_multiplier": self.noise_multiplier, "steps": self.steps}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DpEvent:
        """Rebuild from ``to_dict()``; ``kind`` may be absent (a trainer's mechanism dict)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"DpEvent.from_dict needs a mapping, got {type(data).__name__}")  # noqa: TRY004
        missing = [k for k in _FIELDS[1:] if k not in data]
        if missing:
            raise ValueError(f"DpEvent is missing field(s): {', '.join(missing)}")
        extra = sorted(set(data) - set(_FIELDS))
        if extra:
            raise ValueError(f"DpEvent got unknown field(s): {', '.join(extra)}")
        return cls(sample_rate=data["sample_rate"], noise_multiplier=data["noise_multiplier"],
                   steps=data["steps"], kind=data.get("kind", EventKind.LOCAL_DP_SGD))


EventLike = DpEvent | PoissonGaussianEvent | Mapping[str, Any]
History = tuple[DpEvent, ...]


def as_event(item: EventLike) -> DpEvent | None:
    """One event from a DpEvent, a trainer's mechanism (kind local) or a dict; None if it
    released nothing (a 0-step mechanism composes as the identity)."""
    if isinstance(item, DpEvent):
        return item
    if isinstance(item, PoissonGaussianEvent):
        if item.steps == 0:
            return None
        return DpEvent(item.sample_rate, item.noise_multiplier, item.steps)
    if isinstance(item, Mapping):
        return DpEvent.from_dict(item)
    raise ValueError(f"event must be a DpEvent, PoissonGaussianEvent or dict, "
                     f"got {type(item).__name__}")


def as_history(items: Iterable[EventLike]) -> History:
    """A history from any iterable of event-likes (the composition of all of them)."""
    if isinstance(items, (DpEvent, PoissonGaussianEvent, Mapping, str, bytes)):
        raise ValueError("events must be a sequence of events, not a single one")  # noqa: TRY004
    return tuple(e for e in (as_event(i) for i in items) if e is not None)


def compose(*histories: Iterable[EventLike]) -> History:
    """The composition of several histories (order does not matter to the accountants)."""
    return tuple(e for h in histories for e in as_history(h))


def grouped_steps(history: Sequence[DpEvent]) -> dict[tuple[float, float], int]:
    """Total steps per distinct (q, sigma): what both accountants actually need.

    Identical mechanisms compose by adding steps, so 1,000 rounds at one setting cost one
    RDP lookup and one PLD self-composition, not 1,000.
    """
    out: dict[tuple[float, float], int] = {}
    for e in history:
        key = (e.sample_rate, e.noise_multiplier)
        out[key] = out.get(key, 0) + e.steps
    return out


#: A composition as sorted ((q, sigma), total steps): hashable, the same for every order.
Composition = tuple[tuple[tuple[float, float], int], ...]


def composition(history: Sequence[DpEvent]) -> Composition:
    """:func:`grouped_steps` as a cache key (all an accountant needs of a history)."""
    return tuple(sorted(grouped_steps(history).items()))


def history_to_json(history: Iterable[EventLike]) -> str:
    return json.dumps([e.to_dict() for e in as_history(history)])


def history_from_json(text: str) -> History:
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("event history JSON must be a list of events")  # noqa: TRY004
    return as_history(data)


def check_delta(delta: float) -> float:
    """delta must be a number in (0, 1); shared by every accountant entry point."""
    if not is_finite(delta) or not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return float(delta)
