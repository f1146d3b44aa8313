"""Representation upload: what a device sends when the server asks for its representations.

Per clip only three things leave the device: one payload-v1 (`privacy.payload`: the
quantised z, fixed size), the capture time (day, and hour where the footage gives one) and the clip id.
Frames, mu and logvar never do.

**z is a sample of q(z|x)**, drawn with noise from the OS CSPRNG and then quantised. The KL
rate KL(q(z|x) || N(0, I)) bounds I(X; Z) for the *sampled* Z (and, by data processing,
for its quantisation); it bounds nothing for the deterministic mean mu(x). Every upload
draws fresh noise, so each Z_t depends on its clip X_t alone and the sum of the KL rates
over the uploads bounds I(X_1..X_T; Z_1..Z_T) (docs/architecture.md, docs/representations.md).

**Side channels.** Whoever watches encrypted traffic sees the sizes and times of messages,
and activity can be inferred from those alone. So a batch reveals neither how many clips
the device really had nor what they showed:

* the server asks on a fixed schedule for a fixed count M of clips (`query.upload`);
* the reply is one blob in the BATCH format below whose length depends only on
  (M, latent_dim, dtype). A device with fewer than M clips to send (or whose information
  cap stops it) fills the batch with dummy records, flagged only inside the blob;
* the device runs the encoder on exactly M clips whatever it holds (dummies on a blank
  clip), so the work, and with it the reply's timing, does not count its real clips.

**Randomized release.** When the request names a release clip norm and noise multiplier,
the device sends ``GaussianRelease.apply(mu, noise)`` instead of a sample of q(z|x): the
posterior mean clipped to L2 norm C plus Gaussian noise from the OS CSPRNG
(`privacy.release_mechanism`). That upload has a formal (epsilon, delta) guarantee, so it
is charged to the device's DP ledger like DP-SGD (`reserve_release`), before the batch
exists: a crash after the reservation can only over-count. It is charged for all M slots
(``event(M)``), real or dummy: conservative, and the charge says nothing about how many
clips were real. Dummy slots carry the zero vector through the same mechanism (fresh
noise), which is what the mechanism's remove-one neighbour is, and the work per batch is
the same whatever the device holds.

**Unlinkable collection.** When the request carries the analyzer's and the shuffler's
public keys, no record reaches the server readable: each record (payload, capture day
coarsened to the requested window or dropped, a fresh random pseudonym instead of the clip
id, the real/dummy flag; no hour) is sealed to the analyzer, and the M sealed records
together to the shuffler (`privacy.shuffle.records`). The reply is a SEALED batch: the
outer blob plus the ledger charge the device reports today, nothing else; its size depends
on (M, latent_dim, dtype) only, and the sealing work is the same M records every time.
The device seals only to the shuffler key it was provisioned with (`privacy.shuffle.pin`)
and refuses, before charging anything, a request naming another key or a finer time
window than it accepts; without a pinned key it refuses every unlinkable request.

The request and the batch formats are the wire contract: `privacy.wire.upload`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fl_client.clip_source import Capture
from fl_client.device_ledger import DeviceLedger, DeviceLedgerError
from fl_client.info_ledger import InfoLedger
from privacy.encoder import EncoderConfig, build_model, encode, load_numpy_state
from privacy.payload import encode_payload
from privacy.release_mechanism import GaussianRelease
from privacy.secure_normal import secure_standard_normal
from privacy.shuffle.pin import ShufflerPin
from privacy.shuffle.records import (
    InnerRecord,
    coarsen_day,
    inner_context,
    new_pseudonym,
    outer_context,
    seal_batch,
)
from privacy.vib import kl_bits
from privacy.wire.upload import (
    Batch,
    SealedBatch,
    UploadRecord,
    UploadRequest,
    encode_batch,
    encode_sealed,
    encoder_version,
)


class UploadRefused(RuntimeError):
    """The device will not answer this upload request (the reason names what is wrong)."""


@dataclass(frozen=True)
class Privatized:
    """Quantised uploads of the real clips, a dummy payload per slot, and each real clip's
    information charge in bits."""

    payloads: list[bytes]  # [R]
    dummies: tuple[bytes, ...]  # [M]: slot i >= sent carries dummies[i]
    bits: np.ndarray  # float64 [R]


def privatize(model_cfg: EncoderConfig, arrays: Mapping[str, np.ndarray], capture: Capture,
              clips: int, dtype: str, rng: np.random.Generator,
              release: GaussianRelease | None = None) -> Privatized:
    """Encode exactly `clips` clips (the real ones, then blank placeholders), then either
    sample z from q(z|x) (charged its KL rate) or, with `release`, release the clipped
    posterior mean through the Gaussian mechanism (charged `release_bits`).

    Everything is computed for all M slots, dummies included, so the work does not depend
    on how many clips were real.
    """
    real = len(capture.clip_ids)
    if real > clips:
        raise ValueError(f"capture holds {real} clips, the batch only {clips}")
    model = build_model(model_cfg)
    load_numpy_state(model, dict(arrays))
    blank = np.zeros((clips - real, *capture.frames.shape[1:]), np.uint8)
    mu, logvar = encode(model, np.concatenate([capture.frames, blank]))
    if release is not None:
        return _released(release, mu, real, dtype)
    z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape, dtype=np.float32)
    payloads = [encode_payload(row, dtype) for row in z]
    dummy = encode_payload(np.zeros(model_cfg.latent_dim, np.float32), dtype)
    return Privatized(payloads[:real], (dummy,) * clips, kl_bits(mu[:real], logvar[:real]))


def release_bits(release: GaussianRelease, latent_dim: int) -> float:
    """The information charge of one released clip: ``release.information_bits(D)``.

    A valid bound: the released vector is a Gaussian channel whose input, the clipped mean,
    has power at most C^2 whatever the clip, so I(X; y) is at most that channel's capacity
    (and quantisation, post-processing, cannot raise it). Each upload draws fresh noise and
    depends on its own clip only, so these charges add up over uploads exactly as the KL
    rates of sampled uploads do. It is the same for every clip: charging it reveals nothing
    about the content (a KL rate would: it is a function of the clip).
    """
    return release.information_bits(latent_dim)


def _released(release: GaussianRelease, mu: np.ndarray, real: int, dtype: str) -> Privatized:
    """The M slots through the mechanism: the real clips' means, blank slots as the zero
    vector, and M dummies (the zero vector, fresh noise) for the slots a cap leaves unsent.
    One CSPRNG draw of [2M, D] whatever the content."""
    clips, latent_dim = mu.shape
    means = np.zeros((2 * clips, latent_dim), np.float64)
    means[:real] = mu[:real]
    released = release.apply(means, secure_standard_normal(means.shape))
    payloads = [encode_payload(row, dtype) for row in released]
    return Privatized(payloads[:real], tuple(payloads[clips:]),
                      np.full(real, release_bits(release, latent_dim)))


def reserve_release(request: UploadRequest, ledger: DeviceLedger | None
                    ) -> GaussianRelease | None:
    """The request's release (None: sampled uploads), reserved on the device's DP ledger.

    Records ``event(M)`` for all M slots under the ledger's lock after checking the
    device's own cap and the registry's (the request's ``release_epsilon_cap``); refuses
    (UploadRefused, one line) when either would be crossed or the ledger is unusable. Every
    answer draws fresh noise, so every answer is its own release: its key is a fresh
    nonce, and a request answered twice is charged twice.
    """
    if not request.randomized:
        return None
    if ledger is None:
        raise UploadRefused("randomized release asked, but the device has no DP ledger "
                            "(no budget instructions in the request): refusing to upload")
    release = GaussianRelease(request.release_clip, request.release_noise)
    try:
        ledger.reserve(request.run_id, request.server_round, [release.event(request.clips)],
                       secrets.token_bytes(32), registry_cap=request.release_epsilon_cap or None,
                       action="upload")
    except DeviceLedgerError as exc:
        raise UploadRefused(str(exc)) from None
    return release


def _hour(hour: int) -> int | None:
    """A clip's hour of capture for the batch; footage that gives none (-1) says unknown."""
    return None if int(hour) < 0 else int(hour)


def assemble(privatized: Privatized, capture: Capture, clips: int, sent: int, charge: int,
             before: int, version: str) -> Batch:
    """The batch: the first `sent` real clips, then dummies up to `clips` records."""
    records = [UploadRecord(privatized.payloads[i], int(capture.days[i]),
                            _hour(capture.hours[i]), str(capture.clip_ids[i]), True)
               for i in range(sent)]
    records += [UploadRecord(privatized.dummies[i], 0, 0, "", False) for i in range(sent, clips)]
    return Batch(tuple(records), version, charge, before, sent < len(capture.clip_ids))


def answer_upload(request: UploadRequest, model_cfg: EncoderConfig,
                  arrays: Mapping[str, np.ndarray], capture: Capture, ledger: InfoLedger,
                  own_cap: float | None, rng: np.random.Generator,
                  dp_ledger: DeviceLedger | None = None, pin: ShufflerPin | None = None
                  ) -> bytes:
    """The device's whole answer: check the model, reserve a randomized release on the DP
    ledger (when asked), privatize, charge the information ledger, encode.

    Both ledgers are charged (on disk) before the batch exists, so a crash after them can
    only over-count. The device counts from the larger of its own total and the server's (a
    lost or restored-from-old-backup file cannot lower the spend below what was recorded
    upstream), and its cap is the smaller of its own and the registry's.
    """
    version = encoder_version(model_cfg, arrays)
    if version != request.encoder_version:
        raise UploadRefused(f"the arrays sent are encoder {version[:12]}, the request names "
                            f"{request.encoder_version[:12]}: refusing to upload")
    if request.unlinkable:  # before any ledger is charged
        check_pin(request, pin)
    release = reserve_release(request, dp_ledger)
    privatized = privatize(model_cfg, arrays, capture, request.clips, request.dtype, rng,
                           release)
    caps = [c for c in (own_cap, request.info_bits_cap or None) if c is not None]
    spend = ledger.spend(request.run_id, request.collection, privatized.bits,
                         min(caps) if caps else None, floor=request.server_bits)
    batch = assemble(privatized, capture, request.clips, spend.clips, spend.bits,
                     spend.before, version)
    return seal(batch, request, pin) if request.unlinkable else encode_batch(batch)


def check_pin(request: UploadRequest, pin: ShufflerPin | None) -> ShufflerPin:
    """The device's pin, if it accepts this unlinkable request (UploadRefused otherwise)."""
    if pin is None:
        raise UploadRefused("unlinkable upload asked, but no shuffler key is provisioned on "
                            "this device (node config 'shuffler-key'): refusing to upload")
    reason = pin.refusal(request.shuffler_key, request.time_granularity_days)
    if reason is not None:
        raise UploadRefused(reason)
    return pin


def seal(batch: Batch, request: UploadRequest, pin: ShufflerPin | None) -> bytes:
    """The SEALED reply to an unlinkable request: every record stripped of what links it
    (clip id -> fresh pseudonym, day -> window, hour dropped), sealed twice, the outer
    layer to the pinned shuffler with the pinned minimum crowd."""
    pin = check_pin(request, pin)
    inner = [InnerRecord(r.payload, coarsen_day(r.day, request.time_granularity_days),
                         new_pseudonym(), r.real) for r in batch.records]
    outer = seal_batch(inner, request.analyzer_key, pin.public_key,
                       inner_context(request.run_id, request.collection, batch.encoder_version),
                       outer_context(request.collection_label),
                       pin.min_crowd)
    return encode_sealed(SealedBatch(outer, len(batch.records), len(batch.real),
                                     batch.encoder_version, batch.bits,
                                     batch.device_bits_before, batch.capped))
