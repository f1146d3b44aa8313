"""SE: system efficiency of privatization on a device.

* latency: seconds to privatize one clip (posterior + sample + int8 payload) with torch
  limited to **one CPU thread** (a phone-class budget), batch of one, median over clips
  after warm-up; the thread setting is restored afterwards. Wall-clock figures are the
  only non-deterministic numbers of the evaluation, so they are kept apart in the report;
* encoder size: parameters and float32 bytes of what a device needs to privatize
  (the frame encoder + posterior head) and of the whole model;
* bytes per clip: the fixed-size payload vs the raw uint8 frames vs JPEG (OpenCV
  ``cv2.imencode``, quality 90, every frame) of the same clip.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from privacy.encoder import VIBModel, _unwrap, frames_to_tensor, num_parameters
from privacy.payload import encode_payload, payload_size

JPEG_QUALITY = 90


def privatize_one(model: VIBModel, clip: np.ndarray, rng: np.random.Generator) -> bytes:
    """What a device does per clip: posterior, one sample of z, the int8 payload."""
    with torch.no_grad():
        mu, logvar = model.posterior(frames_to_tensor(clip[None]))
    z = mu[0].numpy() + np.exp(0.5 * logvar[0].numpy()) * rng.standard_normal(mu.shape[1])
    return encode_payload(z, "int8")


def latency_per_clip(model: VIBModel, clips: np.ndarray, warmup: int = 3, seed: int = 0) -> dict[str, float]:
    """Median / p90 seconds per clip on one thread (wall clock: not deterministic)."""
    base: VIBModel = _unwrap(model)  # type: ignore[assignment]
    was_training = base.training
    threads = torch.get_num_threads()
    base.eval()
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    try:
        for i in range(min(warmup, len(clips))):
            privatize_one(base, clips[i], rng)
        times = []
        for clip in clips:
            t0 = time.perf_counter()
            privatize_one(base, clip, rng)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
        base.train(was_training)
    return {"latency_s_median": float(np.median(times)), "latency_s_p90": float(np.percentile(times, 90)),
            "latency_clips": float(len(times))}


def encoder_size(model: VIBModel) -> dict[str, float]:
    """Parameter counts and float32 bytes: on-device privatizer vs the whole model."""
    base: VIBModel = _unwrap(model)  # type: ignore[assignment]
    device_params = num_parameters(base.encoder) + num_parameters(base.posterior_head)
    total = num_parameters(base)
    return {"device_params": float(device_params), "device_bytes": float(4 * device_params),
            "model_params": float(total), "model_bytes": float(4 * total)}


def jpeg_bytes(clip: np.ndarray, quality: int = JPEG_QUALITY) -> int:
    """Bytes of every frame of one uint8 RGB clip [T, H, W, 3] as a JPEG."""
    import cv2

    total = 0
    for frame in clip:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]),
                               [int(cv2.IMWRITE_JPEG_QUALITY), quality])
        if not ok:
            raise RuntimeError("cv2.imencode failed to encode a frame as JPEG")
        total += len(buf)
    return total


def bytes_per_clip(clips: np.ndarray, latent_dim: int) -> dict[str, float]:
    """Mean bytes per clip: payload (int8) vs raw frames vs JPEG, and the ratios."""
    clips = np.asarray(clips)
    raw = int(np.prod(clips.shape[1:]))
    jpeg = float(np.mean([jpeg_bytes(c) for c in clips]))
    payload = float(payload_size(latent_dim, "int8"))
    return {"payload_bytes": payload, "raw_bytes": float(raw), "jpeg_bytes": jpeg,
            "raw_over_payload": raw / payload, "jpeg_over_payload": jpeg / payload}
