"""The DP event a device's local DP-SGD round incurs, as plain data.

Modelled on dp-accounting's ``dp_event.py`` (``PoissonSampledDpEvent`` wrapping a
``GaussianDpEvent``, self-composed ``steps`` times): one local round of DP-SGD with
Poisson sampling at rate ``sample_rate``, Gaussian noise of standard deviation
``noise_multiplier * clip_norm`` added to the sum of per-example gradients clipped to
``clip_norm``, repeated ``steps`` times. Only the noise *multiplier* matters to the
accountant, so the clipping norm is not part of the event.

Accounting (RDP / PLD) is not done here: the caller keeps one accountant state per
device for the device's whole life and composes these events into it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from privacy.checks import is_int, is_number

_FIELDS = ("sample_rate", "noise_multiplier", "steps")


@dataclass(frozen=True)
class PoissonGaussianEvent:
    """``steps`` x Poisson-subsampled (rate ``sample_rate``) Gaussian mechanism.

    ``sample_rate == 1`` is allowed and means no amplification by sampling (a device
    whose dataset is no larger than its batch). ``steps == 0`` is an event that released
    nothing (it composes as the identity).
    """

    sample_rate: float
    noise_multiplier: float
    steps: int

    def __post_init__(self) -> None:
        q = self.sample_rate
        if not is_number(q):
            raise ValueError(f"sample_rate must be a number in (0, 1], got {q!r}")
        if not math.isfinite(q) or not 0.0 < q <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {q!r}")
        s = self.noise_multiplier
        if not is_number(s):
            raise ValueError(f"noise_multiplier must be a positive number, got {s!r}")
        if not math.isfinite(s) or s <= 0.0:
            raise ValueError(
                f"noise_multiplier must be finite and > 0 (sigma=0 gives no DP), got {s!r}"
            )
        n = self.steps
        if not is_int(n) or n < 0:
            raise ValueError(f"steps must be a non-negative int, got {n!r}")
        object.__setattr__(self, "steps", int(n))
        # Normalise numeric types so equality and serialisation are exact.
        object.__setattr__(self, "sample_rate", float(q))
        object.__setattr__(self, "noise_multiplier", float(s))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoissonGaussianEvent:
        """Rebuild from ``to_dict()`` output; missing/extra keys raise ValueError naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(f"PoissonGaussianEvent.from_dict needs a mapping, got {type(data)}")  # noqa: TRY004
        missing = [k for k in _FIELDS if k not in data]
        if missing:
            raise ValueError(f"PoissonGaussianEvent is missing field(s): {', '.join(missing)}")
        extra = sorted(set(data) - set(_FIELDS))
        if extra:
            raise ValueError(f"PoissonGaussianEvent got unknown field(s): {', '.join(extra)}")
        steps = data["steps"]
        if isinstance(steps, float) and steps.is_integer():
            steps = int(steps)
        return cls(
            sample_rate=data["sample_rate"],
            noise_multiplier=data["noise_multiplier"],
            steps=steps,
        )
