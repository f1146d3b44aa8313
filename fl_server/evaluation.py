"""Server-side evaluation on held-out synthetic footage: utility and privacy probes.

The held-out set is every device's clips from the days *after* its training days (the
fleet spec covers both; devices train only on the first `train_days`). Probes
are fitted on the first half of those days and scored on the second half, so the
identity probe measures cross-day re-identification, not memorisation of a clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fl_client.synthetic import ClipBatch, FleetSpec, fleet_batch
from privacy.encoder import EncoderConfig, build_model, encode, load_numpy_state
from privacy.probes import chance_accuracy, linear_probe_accuracy
from privacy.vib import kl_bits


@dataclass(frozen=True)
class HeldOut:
    fit: ClipBatch
    test: ClipBatch

    @classmethod
    def for_fleet(cls, spec: FleetSpec, train_days: int) -> HeldOut:
        """Days [train_days, spec.days) are held out; fit on the first half, test on the rest."""
        devices = range(spec.num_devices)
        split = train_days + max(1, (spec.days - train_days) // 2)
        return cls(fit=fleet_batch(spec, devices, range(train_days, split)),
                   test=fleet_batch(spec, devices, range(split, spec.days)))


def evaluate_encoder(
    model_cfg: EncoderConfig, arrays: dict[str, np.ndarray], held_out: HeldOut, seed: int
) -> dict[str, float]:
    """Probe accuracies (activity = utility, wearer = identity) and the mean rate in bits."""
    model = build_model(model_cfg, seed=seed)
    load_numpy_state(model, arrays)
    mu_fit, _ = encode(model, held_out.fit.x)
    mu_test, logvar_test = encode(model, held_out.test.x)
    result = {"kl_bits": float(np.mean(kl_bits(mu_test, logvar_test)))}
    for name, label in (("utility", "activity"), ("identity", "wearer")):
        y_fit, y_test = held_out.fit.labels[label], held_out.test.labels[label]
        result[f"{name}_acc"] = linear_probe_accuracy(mu_fit, y_fit, mu_test, y_test, seed)
        result[f"{name}_chance"] = chance_accuracy(y_fit, y_test)
    return result
