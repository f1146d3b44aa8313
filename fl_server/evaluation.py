"""Server-side evaluation on held-out footage: utility and privacy probes.

The held-out set is every device's clips from the days *after* its training days (the
fleet spec covers both; devices train only on the first `train_days`). Probes
are fitted on the first half of those days and scored on the second half, so the
identity probe measures cross-day re-identification, not memorisation of a clip. A run
over real footage builds its HeldOut from the operator's own eval manifest instead
(`fl_server.eval_set`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from privacy.clips import ClipBatch
from privacy.encoder import EncoderConfig, build_model, encode, load_numpy_state
from privacy.probes import chance_accuracy, linear_probe_accuracy
from privacy.synthetic import FleetSpec, fleet_batch
from privacy.vib import kl_bits


@dataclass(frozen=True)
class HeldOut:
    fit: ClipBatch
    test: ClipBatch

    @classmethod
    def for_fleet(cls, spec: FleetSpec, train_days: int, probe_devices: int = 0) -> HeldOut:
        """Days [train_days, spec.days) are held out; fit on the first half, test on the rest.

        `probe_devices` > 0 keeps that many devices, evenly spread over the fleet (a
        1,000-device fleet would otherwise have the server encode 1,000 devices' held-out
        clips and fit a 1,000-way identity probe every round)."""
        devices = probe_device_indices(spec.num_devices, probe_devices)
        split = train_days + max(1, (spec.days - train_days) // 2)
        return cls(fit=fleet_batch(spec, devices, range(train_days, split)),
                   test=fleet_batch(spec, devices, range(split, spec.days)))


def probe_device_indices(num_devices: int, probe_devices: int) -> list[int]:
    """`probe_devices` device indices evenly spread over `num_devices` (0 or more: all)."""
    if probe_devices <= 0 or probe_devices >= num_devices:
        return list(range(num_devices))
    return sorted({round(i * (num_devices - 1) / (probe_devices - 1)) if probe_devices > 1
                   else 0 for i in range(probe_devices)})


def evaluate_encoder(
    model_cfg: EncoderConfig, arrays: dict[str, np.ndarray], held_out: HeldOut, seed: int,
    beta: float,
) -> dict[str, float]:
    """Held-out VIB loss, probe accuracies (activity = utility, wearer = identity), rate.

    `loss` is the supervised VIB objective on the server's own held-out clips
    (activity cross-entropy of the model's head at z = mu, + beta * KL in nats): one number
    comparable across runs with and without DP, computed from no device's private data.
    """
    model = build_model(model_cfg, seed=seed)
    load_numpy_state(model, arrays)
    mu_fit, _ = encode(model, held_out.fit.x)
    mu_test, logvar_test = encode(model, held_out.test.x)
    # Real footage may hold clips without a label (-1), or with a value the head has no
    # class for: each figure is over the clips that have its label.
    y_head = held_out.test.labels["activity"]
    in_head = (y_head >= 0) & (y_head < model_cfg.num_activities)
    cross_entropy = 0.0
    if in_head.any():
        with torch.no_grad():
            logits = model.activity_head(torch.from_numpy(mu_test[in_head]))
            cross_entropy = float(F.cross_entropy(logits, torch.from_numpy(y_head[in_head])))
    rate_bits = kl_bits(mu_test, logvar_test)
    result = {"kl_bits": float(np.mean(rate_bits)),
              "loss": cross_entropy + beta * float(np.mean(rate_bits)) * math.log(2)}
    for name, label in (("utility", "activity"), ("identity", "wearer")):
        y_fit, y_test = held_out.fit.labels[label], held_out.test.labels[label]
        fit, test = y_fit >= 0, y_test >= 0
        if not fit.any() or not test.any():
            raise ValueError(f"the server's held-out clips carry no {label} label on the "
                             f"{'fit' if not fit.any() else 'test'} days")
        result[f"{name}_acc"] = linear_probe_accuracy(mu_fit[fit], y_fit[fit], mu_test[test],
                                                      y_test[test], seed)
        result[f"{name}_chance"] = chance_accuracy(y_fit[fit], y_test[test])
    return result
