"""Runs the four dimensions for a list of representations on one set of data splits.

The caller (``fedmsr eval``, later the server's leakage tracker) supplies the clips and
labels as arrays, the representations (:mod:`.baselines`) and, for the DP-SGD gradient
attack, a function producing a DP-SGD update (Opacus lives on the caller's side).

Splits (see :mod:`.leakage` for the threat model):

* ``fit``: the target devices on days disjoint from both the encoders' training days and
  the targets' days: the attacker's labelled data, and the downstream probes' training set;
* ``test``: the target devices' released clips (what is attacked / scored);
* ``pop``: other devices (never trained on, never attacked): the attacker's population
  for the linkage metric.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from privacy.encoder import VIBModel, frames_to_tensor
from privacy.evaluation.baselines import (
    EncoderRepresentation,
    PixelRepresentation,
    RandomizedRepresentation,
    mean_frames,
)
from privacy.evaluation.dtp import PROBES, chance, evaluate_dtp, probe_accuracy
from privacy.evaluation.leakage import DEFAULT_KS, Observed, evaluate_leakage
from privacy.evaluation.reconstruction import (
    decoder_attack,
    gradient_inversion,
    invert_encoder,
    matched_quality,
    psnr,
    quality,
    vib_gradient,
)
from privacy.evaluation.tasks import SYNTHETIC, Tasks, attribute

Representation = PixelRepresentation | EncoderRepresentation | RandomizedRepresentation
DPUpdate = Callable[[VIBModel, np.ndarray, np.ndarray], dict[str, torch.Tensor]]
_SPLIT_TAG = {"fit": 1, "test": 2, "pop": 3}


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # uint8 [N, T, H, W, 3]
    #: int label arrays by name: ``device``, ``day`` and the tasks' labels (synthetic:
    #: activity, wearer, location, hour, indoor, objects; a manifest: its label columns)
    labels: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class EvalData:
    fit: Split
    test: Split
    pop: Split | None = None


@dataclass(frozen=True)
class HarnessConfig:
    seed: int = 0
    ks: Sequence[int] = DEFAULT_KS
    repeats: int = 20
    probes: Sequence[str] = PROBES
    decoder_epochs: int = 60
    inversion_steps: int = 200
    inversion_targets: int = 8
    gi_steps: int = 250
    gi_targets: int = 2
    secure_sum_devices: int = 4
    recon_examples: int = 6
    tasks: Tasks = SYNTHETIC


def release(rep: Representation, split: Split, seed: int, tag: str) -> np.ndarray:
    """A representation's output for a split, with split-specific sampling noise."""
    return rep.features(split.x, seed * 1000 + _SPLIT_TAG[tag])


def evaluate_representation(rep: Representation, data: EvalData, cfg: HarnessConfig,
                            on_step: Callable[[str], None] = lambda step: None) -> dict:
    """DTP, PL and RR (decoder; direct view for pixels; white-box inversion for encoders).

    ``on_step`` hears the name of each attack as it starts: each takes minutes at full
    scale, and a progress display that only names the representation looks stuck."""
    on_step("releasing")
    z_fit = release(rep, data.fit, cfg.seed, "fit")
    z_test = release(rep, data.test, cfg.seed, "test")
    row: dict = {"name": rep.name, "family": rep.family}
    tasks = cfg.tasks
    on_step("DTP probes")
    row["dtp"] = evaluate_dtp(z_fit, data.fit.labels, z_test, data.test.labels, cfg.seed,
                              tuple(cfg.probes), (tasks.utility, *tasks.unseen), tasks.multilabel)
    pop = None
    if data.pop is not None:
        pop = Observed(release(rep, data.pop, cfg.seed, "pop"), data.pop.labels)
    on_step("PL attacks")
    row["pl"] = evaluate_leakage(Observed(z_fit, data.fit.labels), Observed(z_test, data.test.labels),
                                 pop, ks=cfg.ks, repeats=cfg.repeats, seed=cfg.seed, probes=cfg.probes,
                                 attributes=tasks.private, identity=tasks.identity)
    truth_fit, truth_test = mean_frames(data.fit.x), mean_frames(data.test.x)
    on_step("RR decoder attack")
    dec = decoder_attack(z_fit, truth_fit, z_test, truth_test, cfg.seed, cfg.decoder_epochs)
    rr: dict = {"decoder": {k: dec[k] for k in ("decoder", "validation_psnr", "psnr", "ssim")}}
    recon = {"decoder": dec["recon"][: cfg.recon_examples]}
    if isinstance(rep, PixelRepresentation):
        seen = mean_frames(rep.released_frames(data.test.x, cfg.seed * 1000 + _SPLIT_TAG["test"]))
        rr["direct"] = quality(seen, truth_test)
        recon["direct"] = seen[: cfg.recon_examples]
    else:
        row["kl_bits"] = rep.mean_kl_bits(data.test.x)
        row["beta"] = rep.beta
        row["dp_sgd"] = rep.dp_sgd
    if isinstance(rep, RandomizedRepresentation):
        row["release"] = {"clip_norm": rep.mechanism.clip_norm,
                          "noise_multiplier": rep.mechanism.noise_multiplier}
    elif isinstance(rep, EncoderRepresentation):
        # white-box inversion matches the encoder's own sample; a randomized release is
        # attacked by the learned decoder only (its outputs are not the encoder's scale)
        n = min(cfg.inversion_targets, len(z_test))
        on_step("RR inversion attack")
        inv = invert_encoder(rep.model, z_test[:n], truth_fit.mean(axis=0), steps=cfg.inversion_steps)
        rr["inversion"] = quality(inv, truth_test[:n])
        recon["inversion"] = inv[: cfg.recon_examples]
    best = max(rr, key=lambda k: rr[k]["psnr"])
    rr["best"] = {"attack": best, "psnr": rr[best]["psnr"], "ssim": rr[best]["ssim"]}
    row["rr"] = rr
    row["_recon"] = recon  # arrays for the plots (not serialised)
    row["_released"] = (z_fit, z_test, None if pop is None else pop.z)  # for the linking attack
    return row


def gradient_inversion_study(model: VIBModel, beta: float, x: np.ndarray, y: np.ndarray,
                             cfg: HarnessConfig, dp_update: DPUpdate | None = None) -> dict:
    """Geiping-style inversion of (a) a plain single-clip update, (b) a DP-SGD update of
    the same clip (when ``dp_update`` is given), (c) the secure-aggregation sum of
    ``secure_sum_devices`` devices' single-clip updates."""
    image_size = x.shape[2]
    truth = mean_frames(x)
    kw = {"beta": beta, "image_size": image_size, "steps": cfg.gi_steps, "seed": cfg.seed}
    out: dict = {"_recon": {}}
    n = min(cfg.gi_targets, len(x))
    cases: dict[str, Callable[[int], dict[str, torch.Tensor]]] = {
        "plain": lambda i: vib_gradient(model, frames_to_tensor(x[i:i + 1]),
                                        torch.as_tensor(y[i:i + 1], dtype=torch.long), beta),
    }
    if dp_update is not None:
        cases["dp_sgd"] = lambda i: dp_update(model, x[i:i + 1], y[i:i + 1])
    for name, update in cases.items():
        recons = np.concatenate([gradient_inversion(model, update(i), [int(y[i])], **kw)
                                 for i in range(n)])
        out[name] = quality(recons, truth[:n])
        out["_recon"][name] = recons
    m = min(cfg.secure_sum_devices, len(x))
    if m >= 2:
        grads = [cases["plain"](i) for i in range(m)]
        summed = {k: torch.stack([g[k] for g in grads]).sum(dim=0) for k in grads[0]}
        recons = gradient_inversion(model, summed, [int(v) for v in y[:m]], **kw)
        out["secure_sum"] = {**matched_quality(recons, truth[:m]), "devices": m}
        out["_recon"]["secure_sum"] = recons[:n]
    out["_truth"] = truth[:n]
    return out


def references(data: EvalData, tasks: Tasks = SYNTHETIC) -> dict:
    """Two yardsticks that explain the table.

    * ``identity_from_activity``: how well the identity attribute (the wearer) is inferred
      from the *true utility label alone* (activity; a linear probe on the one-hot label,
      fit -> test). Routines differ per device, so any representation that keeps activity
      keeps at least this much identity: a floor no utility-preserving encoder can go below;
    * ``prior_psnr``: PSNR of always answering the attacker's mean frame (what a decoder
      that learned nothing about the clip achieves).
    """
    act_fit = attribute(data.fit.labels, tasks.utility)
    act_test = attribute(data.test.labels, tasks.utility)
    n_act = int(max(act_fit.max(), act_test.max())) + 1
    onehot_fit = np.eye(n_act)[act_fit]
    onehot_test = np.eye(n_act)[act_test]
    y_fit = attribute(data.fit.labels, tasks.identity)
    y_test = attribute(data.test.labels, tasks.identity)
    truth = mean_frames(data.test.x)
    prior = np.broadcast_to(mean_frames(data.fit.x).mean(axis=0), truth.shape)
    return {
        "identity_from_activity": probe_accuracy("linear", onehot_fit, y_fit, onehot_test, y_test),
        "identity_chance": chance(y_fit, y_test),
        "prior_psnr": psnr(prior, truth),
    }
