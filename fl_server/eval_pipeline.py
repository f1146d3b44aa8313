"""The pipeline behind `fedmsr eval`: the DTP / PL / RR / SE privacy-utility evaluation.

The measurements are `privacy/evaluation`'s; this module supplies what they need from
outside `privacy` (the synthetic fleet, the device trainer, real footage) and writes the
report. It imports torch and the device trainer lazily, so `fedmsr`'s other commands do
not pay for them.

What it does, in order:

1. builds the data splits (:mod:`fl_server.eval_splits`): the synthetic benchmark's
   ``targets`` devices (whose clips are trained on, probed and attacked) plus ``pop``
   other devices (the attacker's own population), with days split into *train* (encoder
   training), *fit* (the attacker's labelled data about the targets and the probes'
   training set) and *test* (the targets' releases); or the same splits of an operator's
   labelled manifest (``--dataset``), decoded once with progress shown per device;
2. trains the compared encoders **centrally** on the targets' train days with the
   device trainer (``fl_client.trainer.train_local``: the same VIB loss, Adam and, for the
   DP row, the same Opacus DP-SGD, over the pooled clips, for a few epochs). This is a
   stand-in for federated training used for speed, documented as such: the evaluation
   measures what an encoder's *outputs* reveal, whichever way it was trained. ``--model
   runs/<id>`` adds a federated run's ``final_model.npz`` to the comparison;
3. evaluates every representation (pixel baselines, beta = 0, MSR at several beta, MSR +
   DP-SGD, the given run) on DTP, PL and RR; runs the gradient-inversion study on the
   first MSR (plain update, DP-SGD update through Opacus, secure-aggregation sum) and SE;
4. writes the report (privacy/evaluation/report.py) atomically into the output folder.

``--clips PATH`` also runs the decoder reconstruction attack and SE on real footage
(``fl_client.footage.load_footage``: the clips carry no labels, so DTP / PL do not apply).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from fl_server.eval_splits import EvalSplits, ManifestPlan
    from privacy.encoder import EncoderConfig


class EvalInputError(ValueError):
    """An input of the evaluation (a run folder, footage) cannot be used; the message says
    why, for the command to name the option it came from."""


@dataclass(frozen=True)
class Scale:
    name: str
    targets: int
    pop: int
    clips_per_day: int
    train_days: int
    fit_days: int
    test_days: int
    epochs: int
    betas: tuple[float, ...]
    ks: tuple[int, ...]
    repeats: int
    decoder_epochs: int
    attack_steps: int  # white-box encoder inversion
    gi_steps: int
    gi_targets: int
    dp_noise: float = 1.0
    dp_clip: float = 1.0
    #: noise multipliers of the randomized releases evaluated (relative to the replace-one
    #: sensitivity 2C); every beta = 0 / MSR encoder is also released through each
    release_noise: tuple[float, ...] = (0.5, 2.0)
    release_delta: float = 1e-5
    #: (beta, weight) of the identity-invariant encoders evaluated (docs/representations.md)
    invariance: tuple[tuple[float, float], ...] = ((0.01, 0.03),)


FULL = Scale("full", targets=8, pop=4, clips_per_day=16, train_days=4, fit_days=4, test_days=4,
             epochs=60, betas=(0.01, 0.03, 0.05, 0.1), ks=(1, 2, 4, 8, 16, 32, 64), repeats=20,
             decoder_epochs=60, attack_steps=200, gi_steps=250, gi_targets=3,
             invariance=((0.01, 0.03), (0.05, 0.03)))
REDUCED = Scale("reduced", targets=6, pop=3, clips_per_day=8, train_days=4, fit_days=2, test_days=2,
                epochs=40, betas=(0.01, 0.1), ks=(1, 2, 4, 8, 16), repeats=10,
                decoder_epochs=25, attack_steps=100, gi_steps=150, gi_targets=2,
                release_noise=(1.0,))


@dataclass(frozen=True)
class RunModel:
    """A federated run's final model, evaluated beside the centrally trained encoders."""

    name: str
    encoder: EncoderConfig
    arrays: dict[str, np.ndarray]
    beta: float


def load_run_model(run_dir: Path) -> RunModel:
    """A run's final model (final_model.npz + final_model.json; beta from run.json)."""
    npz, meta = run_dir / "final_model.npz", run_dir / "final_model.json"
    if not npz.is_file() or not meta.is_file():
        raise EvalInputError(f"{run_dir} has no final_model.npz / final_model.json; pass a "
                             "completed run folder")
    import numpy as np

    from privacy.encoder import EncoderConfig

    try:
        cfg = EncoderConfig(**json.loads(meta.read_text())["encoder"])
        with np.load(npz) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise EvalInputError(f"cannot read the final model in {run_dir}: {exc}") from None
    beta = float("nan")
    try:
        beta = float(json.loads((run_dir / "run.json").read_text())["beta"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return RunModel(f"run {run_dir.name}", cfg, arrays, beta)


def load_clips(path: str, run_model: RunModel | None, image_size: int | None = None) -> np.ndarray:
    """Real footage as clips shaped for the evaluated encoders (at least 4: 2 for the
    attacker, 2 for the target)."""
    from privacy.footage import load_footage

    size = image_size or (run_model.encoder.image_size if run_model else 32)
    frames = run_model.encoder.frames if run_model else 8
    try:
        loaded = load_footage(path, frames=frames, image_size=size, max_clips=200)
    except (ValueError, FileNotFoundError) as exc:
        raise EvalInputError(str(exc).replace("load_footage: ", "")) from None
    import numpy as np

    if len(loaded) < 4:
        raise EvalInputError(f"{path} gives {len(loaded)} clips; need at least 4 (2 attacker, "
                             "2 target)")
    return np.stack([c.frames for c in loaded])


# ------------------------------------------------------------------------------ the run


def _train(cfg: EncoderConfig, splits: EvalSplits, beta: float, dp: bool, scale: Scale, seed: int,
           invariance: float = 0.0):
    """One compared encoder, trained centrally; with ``invariance`` > 0, alternating with
    device-discriminator fits on its own released z (``train_invariant``, the stand-in for
    the server refitting between rounds; only the training clips' device index is used)."""
    from fl_client.trainer import TrainConfig, train_invariant, train_local
    from privacy.encoder import build_model, load_numpy_state, state_to_numpy

    init = state_to_numpy(build_model(cfg, seed=seed))
    tc = TrainConfig(epochs=scale.epochs, batch_size=16, lr=2e-3, beta=beta, utility="supervised",
                     dp_sgd=dp, noise_multiplier=scale.dp_noise, clip_norm=scale.dp_clip, seed=seed,
                     invariance_weight=invariance)
    result = (train_invariant(cfg, init, splits.train_x, splits.train_y, splits.train_devices,
                              # one plain epoch, then at least one against the discriminator
                              dataclasses.replace(tc, epochs=max(2, tc.epochs)))
              if invariance > 0 else train_local(cfg, init, splits.train_x, splits.train_y, tc))
    model = build_model(cfg, seed=seed)
    load_numpy_state(model, result.arrays)
    return model


def dp_sgd_update(model, x, y, *, beta: float, noise_multiplier: float, clip_norm: float,
                  seed: int) -> dict:
    """One DP-SGD release of one device's single-clip batch, through Opacus (the trainer's
    DPStepper: per-clip clipping to ``clip_norm`` + N(0, (sigma C)^2) noise), read back as
    the privatized gradient (an SGD step with lr 1 on a copy of the model)."""
    import copy

    import torch

    from fl_client.trainer import Batch, DPStepper
    from privacy.encoder import frames_to_tensor
    from privacy.evaluation.reconstruction import trained_names
    from privacy.vib import VIBCriterion, VIBTarget

    net = copy.deepcopy(model).train()
    names = set(trained_names(net))
    for name, p in net.named_parameters():
        p.requires_grad_(name in names)
    before = {n: p.detach().clone() for n, p in net.named_parameters() if n in names}
    params = [p for n, p in net.named_parameters() if n in names]
    gen = torch.Generator().manual_seed(seed)
    stepper = DPStepper(net, torch.optim.SGD(params, lr=1.0), VIBCriterion(beta, "supervised"),
                        noise_multiplier=noise_multiplier, clip_norm=clip_norm,
                        expected_batch_size=float(len(x)), noise_generator=gen)
    try:
        xt = frames_to_tensor(x)
        stepper.step(Batch(view=xt, eps=torch.zeros(len(x), net.cfg.latent_dim),
                           target=VIBTarget(labels=torch.as_tensor(y, dtype=torch.long))))
    finally:
        stepper.close()
    after = dict(net.named_parameters())
    return {n: (before[n] - after[n].detach()) for n in before}


def run_evaluation(scale: Scale, seed: int, out_dir: Path, run_model: RunModel | None,
                   footage: np.ndarray | None, *, dataset: ManifestPlan | None = None,
                   image_size: int | None = None) -> None:
    """Train, evaluate and attack every representation; write the report into `out_dir`.

    The data are the synthetic fleet of `scale`, or the labelled manifest `dataset`
    (checked by :func:`fl_server.eval_splits.plan_manifest`); `image_size` overrides the
    encoder's (default: the run model's, else 32)."""
    import torch
    from rich.console import Console

    from fl_server.eval_progress import Stages
    from fl_server.eval_splits import manifest_splits, synthetic_splits
    from privacy.encoder import EncoderConfig, build_model, load_numpy_state
    from privacy.evaluation.baselines import (
        EncoderRepresentation,
        RandomizedRepresentation,
        default_pixel_baselines,
        mean_frames,
    )
    from privacy.evaluation.efficiency import bytes_per_clip, encoder_size, latency_per_clip
    from privacy.evaluation.harness import (
        HarnessConfig,
        evaluate_representation,
        gradient_inversion_study,
        references,
        release,
    )
    from privacy.release_mechanism import GaussianRelease
    from privacy.evaluation.harness import Split as _Split
    from privacy.evaluation.reconstruction import decoder_attack
    from privacy.evaluation.report import write_report
    from privacy.footage import DecodeParams

    console = Console(stderr=False)
    torch.manual_seed(seed)
    cfg = run_model.encoder if run_model else EncoderConfig()
    if image_size is not None:
        cfg = dataclasses.replace(cfg, image_size=image_size)
    plan = ([(0.0, False, 0.0)] + [(b, False, 0.0) for b in scale.betas] + [(0.01, True, 0.0)]
            + [(b, False, w) for b, w in scale.invariance])
    n_reps = 4 + len(plan) + len(scale.release_noise) * (len(plan) - 1) + (1 if run_model else 0)
    decode_steps = len(dataset.devices) if dataset else 0
    total = decode_steps + len(plan) + n_reps + 2 + 1 + (1 if footage is not None else 0) + 2
    with Stages(total, console) as stages:
        if dataset is None:
            stages.start("building the synthetic fleet")
            splits = synthetic_splits(scale.targets, scale.pop, scale.clips_per_day, scale.train_days,
                                      scale.fit_days, scale.test_days, seed, cfg.image_size, cfg.frames)
            where = (f"{scale.targets} target + {scale.pop} population devices")
        else:
            stages.start(f"decoding {dataset.manifest.source.name}")
            splits = manifest_splits(dataset, DecodeParams(cfg.frames, cfg.image_size),
                                     on_device=lambda name: stages.done())
            cfg = dataclasses.replace(cfg, num_activities=splits.classes)
            where = (f"manifest {dataset.manifest.source}: {len(dataset.targets)} target + "
                     f"{len(dataset.pop)} population devices")
        data, tasks = splits.data, splits.tasks
        stages.log(f"eval ({scale.name}, seed {seed}): {where}, {len(splits.train_x)} training / "
                   f"{len(data.fit.x)} attacker / {len(data.test.x)} target clips")
        reps: list = list(default_pixel_baselines(cfg.image_size))
        for beta, dp, weight in plan:
            name = (("non-private (beta=0)" if beta == 0 else f"MSR beta={beta:g}")
                    + (" + DP-SGD" if dp else "") + (f" + invariant W={weight:g}" if weight else ""))
            stages.start(f"training {name}", f"training {name} ({scale.epochs} epochs, central)")
            model = _train(cfg, splits, beta, dp, scale, seed, weight)
            reps.append(EncoderRepresentation(name, model, beta, dp))
            stages.done()
        for base in [r for r in reps if r.family == "encoder" and not r.dp_sgd]:
            clip = release_clip(base, data.fit.x)
            for noise in scale.release_noise:
                reps.append(RandomizedRepresentation(f"{base.name} + release sigma={noise:g}", base,
                                                     GaussianRelease(clip, noise)))
        if run_model:
            model = build_model(run_model.encoder, seed=seed)
            load_numpy_state(model, run_model.arrays)
            reps.append(EncoderRepresentation(run_model.name, model, run_model.beta, False))
        hc = HarnessConfig(seed=seed, ks=scale.ks, repeats=scale.repeats, decoder_epochs=scale.decoder_epochs,
                           inversion_steps=scale.attack_steps, gi_steps=scale.gi_steps,
                           gi_targets=scale.gi_targets, tasks=tasks)
        rows = []
        for rep in reps:
            stages.start(f"evaluating {rep.name}", f"evaluating {rep.name}")
            rows.append(evaluate_representation(rep, data, hc, on_step=stages.sub_step))
            stages.done()
        msr = min((r for r in reps if r.family == "encoder" and r.beta > 0 and not r.dp_sgd
                   and r.name.startswith("MSR")), key=lambda r: abs(r.beta - 0.01))
        # the update attacked: a device's first round (global model = the initial weights, the
        # most exposed point of training) and a late round (the trained MSR)
        gi: dict = {"dp": {"noise_multiplier": scale.dp_noise, "clip_norm": scale.dp_clip, "batch": 1},
                    "_recon": {}}
        y_test = data.test.labels[tasks.utility]
        for label, net in (("round 1 (initial model)", build_model(cfg, seed=seed)), (msr.name, msr.model)):
            stages.start(f"gradient inversion on {label}", f"gradient inversion on {label}")
            study = gradient_inversion_study(
                net, msr.beta, data.test.x, y_test, hc,
                dp_update=lambda m, x, y: dp_sgd_update(m, x, y, beta=msr.beta, noise_multiplier=scale.dp_noise,
                                                        clip_norm=scale.dp_clip, seed=seed))
            gi[label] = {k: v for k, v in study.items() if not k.startswith("_")}
            gi["_recon"].update({f"{k} ({label})": v for k, v in study["_recon"].items()})
            stages.done()
        stages.start("system efficiency")
        efficiency: dict[str, Any] = {**encoder_size(msr.model), **bytes_per_clip(data.test.x[:32], cfg.latent_dim)}
        timings: dict[str, Any] = dict(latency_per_clip(msr.model, data.test.x[:32], seed=seed))
        stages.done()
        real: dict[str, Any] = {}
        if footage is not None:
            stages.start("reconstruction on the given clips")
            half = len(footage) // 2
            real_truth_fit, real_truth_test = mean_frames(footage[:half]), mean_frames(footage[half:])
            for rep in reps:
                a = release(rep, _Split(footage[:half], {}), seed, "fit")
                b = release(rep, _Split(footage[half:], {}), seed, "test")
                dec = decoder_attack(a, real_truth_fit, b, real_truth_test, seed, scale.decoder_epochs)
                real[rep.name] = {"psnr": dec["psnr"], "ssim": dec["ssim"], "decoder": dec["decoder"]}
            efficiency["real_clip_bytes"] = bytes_per_clip(footage[:32], cfg.latent_dim)
            timings["real_clip_latency"] = latency_per_clip(msr.model, footage[:16], seed=seed)
            stages.done()
        stages.start("operating points (the attacker links before it accumulates)")
        points = release_points(rows, data, hc, scale)
        stages.done()
        stages.start("writing the report")
        results: dict[str, Any] = {
            "settings": _settings(scale, seed, splits, dataset, cfg, footage is not None),
            "representations": rows,
            "gradient_inversion": gi,
            "efficiency": efficiency,
            "real_clips": real,
            "references": references(data, tasks),
            "operating_points": points,
        }
        n = min(6, len(data.test.x))
        recon_rows = []
        for r in rows:
            best = r["rr"]["best"]["attack"]
            recon_rows.append((f"{r['name']} ({best})", r["_recon"][best][:n]))
        for key, imgs in gi["_recon"].items():
            recon_rows.append((f"gradient inversion: {key}", imgs))
        _write_atomically(out_dir, lambda tmp: write_report(
            results, timings, tmp, truth=mean_frames(data.test.x[:n]), recon_rows=recon_rows, tasks=tasks))
        stages.done()
    near = points["nearest"]
    console.print(f"report written to {out_dir}/ (report.md, table.csv, metrics.json, timings.json, "
                  f"frontier.png, pareto.png, pl_curves.png, reconstructions.png); targets met by: "
                  f"{', '.join(points['met_by']) or 'none'}"
                  + (f" (nearest: {near['name']})" if near and not points["met_by"] else ""))


def release_clip(rep: Any, fit_x: np.ndarray) -> float:
    """The randomized release's clipping norm for an encoder: the median L2 norm of its
    posterior means on the attacker's fit clips (public-side data, never the targets'), so
    about half the released means are clipped."""
    import numpy as np

    mu, _ = rep.posterior(fit_x)
    return float(np.median(np.linalg.norm(mu, axis=1)))


def release_points(rows: list[dict], data: Any, hc: Any, scale: Scale) -> dict[str, Any]:
    """Every encoder row as a linkable and as an unlinkable release (the attacker links the
    shuffled vectors before it accumulates), with the randomized releases' epsilon for one
    device's attacked clips, and the targets (privacy/evaluation/operating_points.py)."""
    import numpy as np

    from privacy.accounting.pld import pld_epsilon
    from privacy.evaluation.leakage import Observed
    from privacy.evaluation.linking import linked_curves
    from privacy.evaluation.operating_points import (
        Targets,
        fano_accuracy_bound,
        identity_from_noisy_utility,
        identity_via_utility,
        label_entropy,
        point,
        summarise,
        utility_accuracy,
    )
    from privacy.evaluation.tasks import attribute
    from privacy.release_mechanism import GaussianRelease

    tasks = hc.tasks
    ref = next(r for r in rows if r["family"] == "encoder" and r.get("beta") == 0.0
               and not r.get("dp_sgd") and "release" not in r)
    blur = next(r for r in rows if r["family"] == "pixels" and r["name"] == "blur")
    ref_act, blur_psnr = utility_accuracy(ref, tasks), float(blur["rr"]["best"]["psnr"])
    per_device = int(np.max(np.unique(data.test.labels["device"], return_counts=True)[1]))
    points = []
    for r in rows:
        if r["family"] != "encoder":
            continue
        z_fit, z_test, z_pop = r["_released"]
        epsilon = bound = None
        if "release" in r:
            mech = GaussianRelease(r["release"]["clip_norm"], r["release"]["noise_multiplier"])
            epsilon = pld_epsilon([mech.event(per_device)], scale.release_delta)
            entropy, classes = label_entropy(attribute(data.test.labels, tasks.utility))
            bound = fano_accuracy_bound(mech.information_bits(z_test.shape[1]), entropy, classes)
        via = identity_via_utility(z_fit, z_test, data.fit.labels, data.test.labels, tasks, hc.seed)
        encoder = r["name"].split(" + release")[0]
        common = {"encoder": encoder, "ref_activity": ref_act, "blur_psnr": blur_psnr,
                  "tasks": tasks, "via_activity": via, "epsilon": epsilon,
                  "activity_bound": bound}
        points.append(point(r, unlinkable=False, **common))
        pop = None if z_pop is None else Observed(z_pop, data.pop.labels)
        linked = linked_curves(Observed(z_fit, data.fit.labels), Observed(z_test, data.test.labels),
                               pop, hc.ks, hc.repeats, hc.seed)
        r["pl"]["linked"] = linked
        points.append(point(r, unlinkable=True, linked=linked, **common))
    out = summarise(points)
    target_activity = Targets().activity_fraction * ref_act
    out["identity_floor"] = {
        "activity": target_activity,
        "identity_k1": identity_from_noisy_utility(data.fit.labels, data.test.labels, tasks,
                                                   target_activity),
        "note": "identity named from the activity label alone when it is right at the "
                "activity target's rate: any release meeting that target hands this much "
                "to the two-step attack (errors spread evenly)"}
    out["epsilon_window_clips"] = per_device
    out["delta"] = scale.release_delta
    return out


#: Scale fields that shape the synthetic fleet (a manifest decides its own devices and days)
_FLEET_FIELDS = ("targets", "pop", "clips_per_day", "train_days", "fit_days", "test_days")


def _settings(scale: Scale, seed: int, splits: EvalSplits, dataset: ManifestPlan | None,
              cfg: EncoderConfig, clips_given: bool) -> dict[str, Any]:
    """The report's ``settings``: the scale, the data, how the encoders were trained."""
    utility = "activity" if dataset is None else f"the utility label {splits.tasks.utility!r}"
    out: dict[str, Any] = {
        "scale": scale.name, "seed": seed, **dataclasses.asdict(scale),
        "data": splits.description,
        "training": f"central train_local, {scale.epochs} epochs, batch 16, Adam 2e-3, "
                    f"supervised utility ({utility}); DP-SGD sigma={scale.dp_noise}, C={scale.dp_clip}; "
                    "invariant: against a device discriminator refitted every 2 epochs "
                    "(logit spread on the posterior mean)",
        "clips": "given" if clips_given else None,
        "utility_classes": splits.classes,  # the utility's chance level: 1 / this
    }
    if dataset is not None:
        for key in _FLEET_FIELDS:
            del out[key]
        out["image_size"] = cfg.image_size
        out["dataset"] = {"manifest": str(dataset.manifest.source), "targets": list(dataset.targets),
                          "population": list(dataset.pop), "rows_left_out": dataset.left_out,
                          "days": {d: dataclasses.asdict(s) for d, s in dataset.days.items()}}
        out["tasks"] = dataclasses.asdict(splits.tasks)
    return out


def _write_atomically(out_dir: Path, write) -> None:
    """Write into a sibling temp folder, then swap it in: no half-written report."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        write(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
