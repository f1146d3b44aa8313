"""RR: reconstruction resistance: how well attackers recover frames from what is released.

The reconstruction target is each clip's **temporal mean frame** (float [H, W, 3] in
[0, 1], :func:`privacy.evaluation.baselines.mean_frames`): the encoder pools frames by
their temporal mean, so frame order is unrecoverable by construction, the scene is not.

Attacks:

* **decoder attacker** (black-box encoder, attacker-side data): the attacker passes its
  own clips through the public pipeline to get (representation, frame) pairs, fits a
  ridge-regression decoder and a small transposed-conv decoder, keeps the one with the
  lower error on a held-out 20 % of *its own* data, and decodes the targets' releases;
* **optimisation inversion** (white-box encoder): find one frame, repeated T times, whose
  posterior mean matches the released z (squared error + total-variation prior, Adam),
  starting from the attacker's mean frame;
* **gradient inversion** (Geiping et al. 2020, "Inverting Gradients"): given a device's
  update (the gradient of the VIB loss, at z = mu, over all trained parameters) and the
  clip label(s) (inferable from the last layer for one example; given here, which only
  helps the attacker), optimise dummy frames so that their gradient has the smallest
  cosine distance to the update, with a TV prior; signed Adam, clamped to [0, 1]. Works on
  a plain single-clip update, a DP-SGD update (clipped + noised; produced by the caller
  through Opacus), and the secure-aggregation sum of several devices' updates (the
  attacker reconstructs as many dummies as summed clips and each true frame is scored
  against its best-matching dummy).

Scores: PSNR (data range 1) and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5,
K1 = 0.01, K2 = 0.03, per channel, averaged over the valid window positions and channels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privacy.encoder import VIBModel, _unwrap
from privacy.vib import kl_per_sample

# ------------------------------------------------------------------ image quality


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean over images (leading axes) of the PSNR in dB of ``[..., H, W, C]`` arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim < 3:
        raise ValueError(f"psnr needs two [..., H, W, C] arrays of one shape, got {a.shape}, {b.shape}")
    mse = ((a - b) ** 2).reshape(-1, int(np.prod(a.shape[-3:]))).mean(axis=1)
    with np.errstate(divide="ignore"):
        values = 10.0 * np.log10(data_range**2 / mse)
    return float(np.mean(values))


def _gauss_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / sigma) ** 2)
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of a [H, W] image with the 1-D window g."""
    k = len(g)
    rows = sum(g[i] * img[i:img.shape[0] - k + 1 + i, :] for i in range(k))
    return sum(g[i] * rows[:, i:rows.shape[1] - k + 1 + i] for i in range(k))


def ssim_image(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM of two [H, W, C] images (H, W >= 11)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 3 or min(a.shape[:2]) < 11:
        raise ValueError(f"ssim needs two [H, W, C] images of one shape with H, W >= 11, got {a.shape}, {b.shape}")
    g = _gauss_window()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for ch in range(a.shape[2]):
        x, y = a[..., ch], b[..., ch]
        mx, my = _filter_valid(x, g), _filter_valid(y, g)
        vx = _filter_valid(x * x, g) - mx * mx
        vy = _filter_valid(y * y, g) - my * my
        cxy = _filter_valid(x * y, g) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        values.append(s.mean())
    return float(np.mean(values))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM over a batch of [N, H, W, C] images (or one [H, W, C] image)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 3:
        return ssim_image(a, b, data_range)
    return float(np.mean([ssim_image(x, y, data_range) for x, y in zip(a, b, strict=True)]))


def quality(recon: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {"psnr": psnr(recon, truth), "ssim": ssim(recon, truth)}


# ------------------------------------------------------------------ decoder attacker


class ConvDecoder(nn.Module):
    """representation [N, F] -> frame [N, H, W, 3] in [0, 1] (three x2 transposed convs)."""

    def __init__(self, in_features: int, image_size: int, width: int = 64):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"ConvDecoder needs an image size divisible by 8, got {image_size}")
        self.base = image_size // 8
        self.width = width
        self.fc = nn.Sequential(nn.Linear(in_features, 256), nn.SiLU(),
                                nn.Linear(256, width * self.base * self.base), nn.SiLU())
        self.up = nn.Sequential(
            nn.ConvTranspose2d(width, width, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(width // 2, 3, 4, 2, 1))

    def forward(self, f: Tensor) -> Tensor:
        h = self.fc(f).view(-1, self.width, self.base, self.base)
        return torch.sigmoid(self.up(h)).permute(0, 2, 3, 1)


def _standardise(fit: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean = fit.mean(axis=0, keepdims=True)
    std = fit.std(axis=0, keepdims=True) + 1e-6
    return [((a - mean) / std).astype(np.float32) for a in (fit, *others)]


def ridge_decoder(f_fit: np.ndarray, y_fit: np.ndarray, f_test: np.ndarray,
                  alpha: float = 10.0) -> np.ndarray:
    """Closed-form ridge regression from standardised features to pixels (dual form if F > N)."""
    a, b = _standardise(f_fit, f_test)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    y = y_fit.reshape(len(y_fit), -1).astype(np.float64)
    ym = y.mean(axis=0, keepdims=True)
    if a64.shape[1] > a64.shape[0]:
        w = a64.T @ np.linalg.solve(a64 @ a64.T + alpha * np.eye(len(a64)), y - ym)
    else:
        w = np.linalg.solve(a64.T @ a64 + alpha * np.eye(a64.shape[1]), a64.T @ (y - ym))
    return np.clip(b64 @ w + ym, 0.0, 1.0).reshape(len(b), *y_fit.shape[1:]).astype(np.float32)


def conv_decoder(f_fit: np.ndarray, y_fit: np.ndarray, f_test: np.ndarray, seed: int,
                 epochs: int = 60, batch_size: int = 32, lr: float = 2e-3) -> np.ndarray:
    """Train :class:`ConvDecoder` with MSE on the fit pairs, decode the test features."""
    a, b = _standardise(f_fit, f_test)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ConvDecoder(a.shape[1], y_fit.shape[1])
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
        fa, ya = torch.from_numpy(a), torch.from_numpy(np.ascontiguousarray(y_fit, np.float32))
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            perm = torch.randperm(len(fa), generator=gen)
            for i in range(0, len(fa), batch_size):
                idx = perm[i:i + batch_size]
                opt.zero_grad(set_to_none=True)
                F.mse_loss(net(fa[idx]), ya[idx]).backward()
                opt.step()
        with torch.no_grad():
            return net(torch.from_numpy(b)).numpy()


def decoder_attack(f_fit: np.ndarray, frames_fit: np.ndarray, f_test: np.ndarray,
                   frames_test: np.ndarray, seed: int, epochs: int = 60) -> dict:
    """Pick ridge or conv decoder on the attacker's own held-out 20 %, then decode targets."""
    n = len(f_fit)
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, round(0.8 * n))
    tr, va = order[:cut], order[cut:]
    choices = {"ridge": lambda fa, ya, fb: ridge_decoder(fa, ya, fb)}
    if frames_fit.shape[1] % 8 == 0 and frames_fit.shape[1] == frames_fit.shape[2]:
        choices["conv"] = lambda fa, ya, fb: conv_decoder(fa, ya, fb, seed, epochs)
    val = {name: psnr(fn(f_fit[tr], frames_fit[tr], f_fit[va]), frames_fit[va])
           for name, fn in choices.items()}
    best = max(val, key=lambda k: val[k])
    recon = choices[best](f_fit[tr], frames_fit[tr], f_test)
    return {"decoder": best, "validation_psnr": val, "recon": recon, **quality(recon, frames_test)}


# ------------------------------------------------------------------ TV prior


def total_variation(img: Tensor) -> Tensor:
    """Mean absolute difference of neighbouring pixels of [N, H, W, 3] images."""
    return ((img[:, 1:] - img[:, :-1]).abs().mean() + (img[:, :, 1:] - img[:, :, :-1]).abs().mean())


def _as_clip(frame: Tensor, frames: int) -> Tensor:
    """[N, H, W, 3] -> a static clip [N, T, 3, H, W]."""
    return frame.permute(0, 3, 1, 2).unsqueeze(1).expand(-1, frames, -1, -1, -1)


# ------------------------------------------------------------------ optimisation inversion


def invert_encoder(model: VIBModel, z_target: np.ndarray, init_frame: np.ndarray, *,
                   steps: int = 200, lr: float = 0.05, tv_weight: float = 0.05) -> np.ndarray:
    """White-box inversion of released z to one static frame per clip ([N, H, W, 3])."""
    base: VIBModel = _unwrap(model)  # type: ignore[assignment]
    was_training = base.training
    base.eval()
    params = [p.requires_grad for p in base.parameters()]
    base.requires_grad_(False)
    try:
        target = torch.as_tensor(np.asarray(z_target, np.float32))
        x = torch.as_tensor(np.repeat(np.asarray(init_frame, np.float32)[None], len(target), 0)).clone()
        x.requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            mu, _ = base.posterior(_as_clip(x, base.cfg.frames))
            loss = ((mu - target) ** 2).sum(dim=1).mean() + tv_weight * total_variation(x)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
        return x.detach().numpy()
    finally:
        for p, flag in zip(base.parameters(), params, strict=True):
            p.requires_grad_(flag)
        base.train(was_training)


# ------------------------------------------------------------------ gradient inversion


def trained_names(model: VIBModel) -> list[str]:
    """Parameters a supervised local round updates (SSL heads stay frozen)."""
    return [n for n, _ in _unwrap(model).named_parameters()
            if not n.startswith(("projector.", "predictor."))]


def vib_gradient(model: VIBModel, x: Tensor, y: Tensor, beta: float,
                 create_graph: bool = False) -> dict[str, Tensor]:
    """Gradient of the mean supervised VIB loss at z = mu over ``trained_names``.

    The single-step update a device sends in FedSGD (up to the learning rate); ``x`` is a
    float clip batch [n, T, 3, H, W] in [0, 1], ``y`` the activity labels [n].
    """
    base: VIBModel = _unwrap(model)  # type: ignore[assignment]
    names = trained_names(base)
    named = dict(base.named_parameters())
    out = base(x, None, logits=True)
    assert out.logits is not None
    loss = (F.cross_entropy(out.logits, y, reduction="none") + beta * kl_per_sample(out.mu, out.logvar)).mean()
    grads = torch.autograd.grad(loss, [named[n] for n in names], create_graph=create_graph)
    return dict(zip(names, grads, strict=True))


def _cosine_distance(a: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
    """1 - cos between two updates, over all their parameters at once."""
    va = torch.cat([a[k].reshape(-1) for k in b])
    vb = torch.cat([b[k].reshape(-1) for k in b])
    return 1.0 - (va * vb).sum() / (va.norm() * vb.norm() + 1e-12)


def gradient_inversion(model: VIBModel, target: dict[str, Tensor], labels: Sequence[int], *,
                       beta: float, image_size: int, steps: int = 250, lr: float = 0.03,
                       tv_weight: float = 0.1, seed: int = 0) -> np.ndarray:
    """Reconstruct ``len(labels)`` static frames whose gradient matches ``target``.

    ``target`` is an update (or the sum of several) keyed like :func:`vib_gradient`.
    Returns [len(labels), H, W, 3] in [0, 1].
    """
    base: VIBModel = _unwrap(model)  # type: ignore[assignment]
    was_training = base.training
    base.eval()  # no dropout / batch statistics anywhere; eval only fixes the mode
    tgt = {k: v.detach() for k, v in target.items()}
    y = torch.as_tensor(list(labels), dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(len(y), image_size, image_size, 3, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(steps * f) for f in (0.375, 0.625, 0.875)], 0.1)
    try:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            grads = vib_gradient(base, _as_clip(x, base.cfg.frames), y, beta, create_graph=True)
            loss = _cosine_distance(grads, tgt) + tv_weight * total_variation(x)
            x.grad, = torch.autograd.grad(loss, [x])
            x.grad.sign_()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
    finally:
        base.train(was_training)
    return x.detach().numpy()


def matched_quality(recon: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Score each true frame against its best-PSNR reconstruction (batch / summed updates)."""
    per_truth = []
    for t in truth:
        scores = [psnr(r[None], t[None]) for r in recon]
        per_truth.append(recon[int(np.argmax(scores))])
    matched = np.stack(per_truth)
    return quality(matched, truth)
