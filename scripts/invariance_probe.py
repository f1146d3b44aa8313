"""Does identity-invariant training buy privacy, and what does it cost in utility?

Trains the MSR encoder (beta = 0.01, supervised activity head, central, like ``fedmsr
eval``'s encoders) on the synthetic evaluation splits (fl_server.eval_splits, the reduced
scale's fleet by default) with ``fl_client.trainer.train_invariant``: the same staged
schedule (epochs split into ``stages + 1`` chunks, a device discriminator refitted on the
released z between chunks) at invariance weight 0 (the baseline) and at each ``--weights``
value. For each encoder it prints, on the released z (one sample of q(z|x) per clip,
fitted on the attacker's fit days, scored on the target days):

* activity linear-probe accuracy (utility),
* single-clip wearer (identity) linear-probe accuracy and its chance,
* profile-fusion wearer accuracy from k = 16 clips of one device (accumulation),
* the last discriminator's device accuracy on the training clips it was fitted on.

Only the device index of each training clip is used in training; wearer labels are used by
the attacker alone.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/invariance_probe.py [--epochs 40]
[--clips-per-day 8] [--stages N] [--weights 0.03 0.1] [--loss logit-spread] [--memory 1]
[--beta 0.01] [--seed 0] [--seeds 3]`` (about 5 minutes on one thread at the defaults).
Each row is the mean (+- standard deviation) over ``--seeds`` fleets and trainings.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--clips-per-day", type=int, default=8)
    ap.add_argument("--stages", type=int, default=None,
                    help="discriminator refits (default: one every 2 epochs)")
    ap.add_argument("--weights", type=float, nargs="*", default=[0.03, 0.1])
    ap.add_argument("--loss", default="logit-spread", choices=("entropy", "entropy-mean", "logit-spread", "reversal"))
    ap.add_argument("--memory", type=int, default=1,
                    help="train against the last N discriminators at once (logit-spread only)")
    ap.add_argument("--hidden", type=int, default=0, help="discriminator hidden units (0 = linear)")
    ap.add_argument("--beta", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0, help="first fleet and training seed")
    ap.add_argument("--seeds", type=int, default=3, help="how many seeds to average over")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from fl_client.trainer import TrainConfig, train_invariant
    from fl_server.eval_pipeline import REDUCED
    from fl_server.eval_splits import synthetic_splits
    from privacy.encoder import EncoderConfig, build_model, load_numpy_state, state_to_numpy
    from privacy.evaluation.baselines import EncoderRepresentation
    from privacy.evaluation.dtp import chance, probe_accuracy
    from privacy.evaluation.leakage import Observed, fusion_curve

    s = REDUCED
    cfg = EncoderConfig()
    seeds = range(args.seed, args.seed + args.seeds)
    stages = args.stages if args.stages is not None else max(1, args.epochs // 2 - 1)
    print(f"{args.epochs} epochs, {stages} stages, loss {args.loss}, memory {args.memory}, "
          f"discriminator hidden "
          f"{args.hidden}, beta {args.beta:g}; fleet and training seeds {list(seeds)}; means over "
          "seeds (+- standard deviation)", flush=True)
    data = {seed: synthetic_splits(s.targets, s.pop, args.clips_per_day, s.train_days, s.fit_days,
                                   s.test_days, seed, cfg.image_size, cfg.frames) for seed in seeds}
    first = data[args.seed]
    print(f"per seed: {len(first.train_x)} training clips from {len(np.unique(first.train_devices))} "
          f"devices; {len(first.data.fit.x)} fit / {len(first.data.test.x)} target clips")
    chances = [(chance(d.data.fit.labels["activity"], d.data.test.labels["activity"]),
                chance(d.data.fit.labels["wearer"], d.data.test.labels["wearer"])) for d in data.values()]
    print(f"chance: activity {np.mean([c[0] for c in chances]):.3f}, "
          f"wearer {np.mean([c[1] for c in chances]):.3f}")
    print(f"{'weight':>7} {'activity':>13} {'wearer@1':>13} {'wearer@16':>13} {'disc acc':>13} {'secs':>6}")
    for weight in [0.0, *args.weights]:
        t0 = time.perf_counter()
        rows = []
        for seed, splits in data.items():
            fit, test = splits.data.fit, splits.data.test
            init = state_to_numpy(build_model(cfg, seed=seed))
            tc = TrainConfig(epochs=args.epochs, batch_size=16, lr=2e-3, beta=args.beta,
                             utility="supervised", seed=seed, invariance_weight=weight)
            res = train_invariant(cfg, init, splits.train_x, splits.train_y, splits.train_devices, tc,
                                  stages=stages, hidden=args.hidden, invariance_loss=args.loss,
                                  memory=args.memory)
            model = build_model(cfg, seed=seed)
            load_numpy_state(model, res.arrays)
            rep = EncoderRepresentation(f"w={weight:g}", model, args.beta)
            z_fit, z_test = rep.features(fit.x, seed * 1000 + 1), rep.features(test.x, seed * 1000 + 2)
            rows.append((
                probe_accuracy("linear", z_fit, fit.labels["activity"], z_test, test.labels["activity"], seed),
                probe_accuracy("linear", z_fit, fit.labels["wearer"], z_test, test.labels["wearer"], seed),
                fusion_curve(Observed(z_fit, fit.labels), Observed(z_test, test.labels), "identity",
                             (16,), 10, seed).get(16, float("nan")),
                res.device_accuracy[-1]))
        m, sd = np.mean(rows, axis=0), np.std(rows, axis=0)
        cells = " ".join(f"{a:7.3f}+-{b:4.2f}" for a, b in zip(m, sd))
        print(f"{weight:7g} {cells} {time.perf_counter() - t0:6.0f}", flush=True)

if __name__ == "__main__":
    main()
