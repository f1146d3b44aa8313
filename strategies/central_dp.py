"""Central, user-level DP-FedAvg: Poisson client sampling, server noise, a fixed denominator.

One round, as the accountant assumes it (McMahan et al. 2018, "Learning Differentially
Private Recurrent Language Models", and dp-accounting's ``PoissonSampledDpEvent``):

1. every *eligible* device (checked in, within its budget) is drawn independently with
   probability ``q`` (Poisson sampling) — not a fixed-size sample;
2. a drawn device trains, then clips its model update (new - global, all arrays) to L2
   norm ``C`` on the device (`privacy.update_clip`), so the sum has sensitivity ``C`` and
   the scheme composes with secure aggregation;
3. the server adds ``N(0, (sigma * C)^2)`` to the **sum** of the updates and divides by the
   **fixed** denominator ``q * N`` (``N`` eligible devices: the *expected* number drawn),
   never by the number actually drawn or answering — that count depends on who took part,
   and dividing by it would leak it and void the sensitivity bound.

Each round is then one ``(q, sigma, 1 step)`` Poisson-subsampled Gaussian release for
*every* eligible device, drawn or not (amplification by sampling is exactly the statement
that non-drawn devices pay the same as drawn ones); the budget wrapper
(`strategies.budget_selection`) reserves that event for the whole population before any
train message leaves.

Randomness: the draw and the noise come from the OS CSPRNG (:class:`ServerRandomness`),
never from the run seed. The seed is written into run.json and a checkpoint, and devices
are told it (it seeds their data and the initial model): whoever can regenerate the noise
can subtract it from the published model, and whoever can predict the draw knows who took
part, which is exactly what amplification by sampling assumes nobody outside the server
knows. Central DP runs are therefore not bit-reproducible, by design (as DP-SGD runs).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
)
from flwr.supercore import log

from privacy.accounting import DpEvent, EventKind
from privacy.secagg.codec import flatten, unflatten
from privacy.update_clip import check_clip_norm, clip_l2
from privacy.wire.arrays import arrays_of
from privacy.wire.records import array_record
from privacy.wire.round_record import CentralDpRecord
from strategies.seeded_fedavg import SeededFedAvg

NoiseSource = Callable[[int], np.ndarray]


@dataclass(frozen=True)
class CentralDpParams:
    """Client sampling rate q, noise multiplier sigma (noise std / C), clipping norm C."""

    sample_rate: float
    noise_multiplier: float
    clip_norm: float

    def __post_init__(self) -> None:
        self.event()  # q in (0, 1], sigma > 0, with the accountant's own messages
        check_clip_norm(self.clip_norm)

    def event(self) -> DpEvent:
        """What one round costs every eligible device."""
        return DpEvent(self.sample_rate, self.noise_multiplier, 1, EventKind.CENTRAL_DP_FEDAVG)

    def denominator(self, population: int) -> float:
        """The fixed denominator q * N (the expected number of drawn devices)."""
        if population < 1:
            raise ValueError(f"the eligible population must be >= 1, got {population}")
        return self.sample_rate * population

    @property
    def noise_std(self) -> float:
        """Std of the Gaussian noise on each coordinate of the sum: sigma * C."""
        return self.noise_multiplier * self.clip_norm


class ServerRandomness:
    """The server's secret randomness: Poisson draws and Gaussian noise.

    Draws use `secrets.SystemRandom` (the OS CSPRNG, 53-bit uniforms). Noise vectors use
    NumPy's PCG64DXSM seeded with 128 fresh bits from the OS CSPRNG per vector; the seed is
    never stored or logged and the generator's raw output is never published (only
    sum + noise / (q N)), so nobody outside this process can regenerate it.
    """

    def __init__(self) -> None:
        self._system = secrets.SystemRandom()

    def uniform(self) -> float:
        return self._system.random()

    def gaussian(self, size: int) -> np.ndarray:
        generator = np.random.Generator(np.random.PCG64DXSM(secrets.randbits(128)))
        return generator.standard_normal(size)


def poisson_sample(population: Sequence[int], sample_rate: float,
                   uniform: Callable[[], float]) -> list[int]:
    """Each member independently with probability ``sample_rate`` (sorted; may be empty)."""
    return sorted(member for member in sorted(population) if uniform() < sample_rate)


def noisy_average(update_sum: np.ndarray, params: CentralDpParams, population: int,
                  noise: NoiseSource, slack: float = 0.0) -> np.ndarray:
    """``(sum + N(0, (sigma (C + slack))^2 I)) / (q N)``: the released average update.

    `slack` widens the sensitivity when one device's contribution to the sum can exceed C
    (secure aggregation's fixed-point rounding, see `aggregate_secure`), so that the
    noise stays sigma times the true sensitivity and the accounted event stays exact.
    """
    noisy = update_sum + params.noise_multiplier * (params.clip_norm + slack) \
        * noise(update_sum.size)
    return noisy / params.denominator(population)


class CentralDpFedAvg(SeededFedAvg):
    """DP-FedAvg over the candidates the server admitted (and budget selection kept).

    `sample` draws by Poisson sampling with the server's CSPRNG and remembers the population
    size, `train_messages` the global arrays of the round; `aggregate_train` (plain path) and
    :meth:`aggregate_secure` (secure aggregation: the unmasked sum) release the noisy average.
    The seeded RNG of `SeededFedAvg` is not used for the draw (it would be predictable).
    """

    def __init__(self, *, params: CentralDpParams, randomness: ServerRandomness | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.params = params
        self.randomness = randomness or ServerRandomness()
        self.population: list[int] = []
        self.drawn: list[int] = []
        self._global: dict[str, np.ndarray] | None = None
        #: Sensitivity beyond C of the release being made (SecAgg rounding), and the noise
        #: std the round's release used (its history record says so).
        self._slack = 0.0
        self._last_noise_std = 0.0

    def sample(self, candidates: Sequence[int]) -> list[int]:
        """Poisson draw over all candidates; the population fixes the denominator."""
        self.population = sorted(candidates)
        self.drawn = poisson_sample(self.population, self.params.sample_rate,
                                    self.randomness.uniform)
        return self.drawn

    def train_messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                       node_ids: Sequence[int]) -> list[Message]:
        """Every drawn device gets the round's arrays; they are the base of the release."""
        self._global = arrays_of(arrays)
        log(INFO, "central DP: drew %s of %s eligible devices (q=%s)",
            len(node_ids), len(self.population), self.params.sample_rate)
        return super().train_messages(server_round, arrays, config, node_ids)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sum of the (re-)clipped updates of the replies, noised, over q N.

        The server clips again: a no-op for an honest device (it clipped already), a bound
        on what a faulty or malicious one can contribute. Replies' weights are ignored
        (user-level DP: every device counts once).
        """
        base = self._round_global()
        total = np.zeros(flatten(base).size)
        answered = 0
        for reply in replies:
            if reply.has_error():
                continue
            new = arrays_of(array_record(reply.content, self.arrayrecord_key))
            total += clip_l2(flatten(new) - flatten(base), self.params.clip_norm)
            answered += 1
        return self._release(base, total), MetricRecord({"contributors": answered})

    def aggregate_sum(self, update_sum: np.ndarray) -> ArrayRecord:
        """The release from an already summed update (each device with weight 1)."""
        return self._release(self._round_global(), np.asarray(update_sum, dtype=np.float64))

    def aggregate_secure(self, mean: np.ndarray, total_weight: int,
                         model: ArrayRecord, rounding_l2: float = 0.0) -> ArrayRecord:
        """Secure aggregation: the unmasked mean of the device-clipped updates, every device
        with weight 1, so mean * count is their sum, which gets the noise.

        Each device's update reaches that sum through fixed-point encoding, which moves it
        by up to `rounding_l2` in L2 (sqrt(d) x half a quantisation step): one device can
        change the sum by C + rounding_l2, not C. The noise is scaled to that sensitivity,
        so (q, sigma, 1 step) remains the exact event.
        """
        del model
        if not (math.isfinite(rounding_l2) and rounding_l2 >= 0):
            raise ValueError(f"rounding_l2 must be a finite number >= 0, got {rounding_l2}")
        self._slack = float(rounding_l2)
        try:
            return self.aggregate_sum(np.asarray(mean, dtype=np.float64) * total_weight)
        finally:
            self._slack = 0.0

    def round_figures(self) -> CentralDpRecord:
        """This round's population, draw, fixed denominator and noise std (for history)."""
        return CentralDpRecord(
            population=len(self.population), drawn=len(self.drawn),
            denominator=self.params.denominator(len(self.population))
            if self.population else None,
            noise_std=self._last_noise_std or self.params.noise_std)

    def _round_global(self) -> dict[str, np.ndarray]:
        if self._global is None or not self.population:
            raise RuntimeError("central DP: sample and train_messages must run before aggregation")
        return self._global

    def _release(self, base: dict[str, np.ndarray], total: np.ndarray) -> ArrayRecord:
        average = noisy_average(total, self.params, len(self.population),
                                self.randomness.gaussian, self._slack)
        self._last_noise_std = self.params.noise_multiplier * (self.params.clip_norm
                                                               + self._slack)
        like = {k: np.asarray(v) for k, v in base.items()}
        new = unflatten(flatten(base) + average, like)
        return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in new.items()})

