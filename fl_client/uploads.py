"""Representation upload: what a device sends when the server asks for its representations.

Per clip only three things leave the device: one payload-v1 (`privacy.payload`: the
quantised z, fixed size), the capture time (day, and hour where the footage gives one) and the clip id.
Frames, mu and logvar never do.

**z is a sample of q(z|x)**, drawn with noise from the OS CSPRNG and then quantised. The KL
rate KL(q(z|x) || N(0, I)) bounds I(X; Z) for the *sampled* Z (and, by data processing,
for its quantisation); it bounds nothing for the deterministic mean mu(x). Every upload
draws fresh noise, so each Z_t depends on its clip X_t alone and the sum of the KL rates
over the uploads bounds I(X_1..X_T; Z_1..Z_T) (DESIGN.md, docs/representations.md).

**Side channels.** Whoever watches encrypted traffic sees the sizes and times of messages,
and activity can be inferred from those alone. So a batch reveals neither how many clips
the device really had nor what they showed:

* the server asks on a fixed schedule for a fixed count M of clips (`query.upload`);
* the reply is one blob in the BATCH format below whose length depends only on
  (M, latent_dim, dtype). A device with fewer than M clips to send (or whose information
  cap stops it) fills the batch with dummy records, flagged only inside the blob;
* the device runs the encoder on exactly M clips whatever it holds (dummies on a blank
  clip), so the work, and with it the reply's timing, does not count its real clips.

**Unlinkable collection.** When the request carries the analyzer's and the shuffler's
public keys, no record reaches the server readable: each record (payload, capture day
coarsened to the requested window or dropped, a fresh random pseudonym instead of the clip
id, the real/dummy flag; no hour) is sealed to the analyzer, and the M sealed records
together to the shuffler (`privacy.shuffle.records`). The reply is a SEALED batch: the
outer blob plus the ledger charge the device reports today, nothing else; its size depends
on (M, latent_dim, dtype) only, and the sealing work is the same M records every time.

The request and the batch formats are the wire contract: `privacy.wire.upload`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fl_client.clip_source import Capture
from fl_client.info_ledger import InfoLedger
from privacy.encoder import EncoderConfig, build_model, encode, load_numpy_state
from privacy.payload import encode_payload
from privacy.shuffle.records import (
    InnerRecord,
    coarsen_day,
    collection_label,
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
    """Quantised samples of the real clips, the dummy payload, and each real clip's KL rate."""

    payloads: list[bytes]  # [R]
    dummy: bytes
    bits: np.ndarray  # float64 [R]


def privatize(model_cfg: EncoderConfig, arrays: Mapping[str, np.ndarray], capture: Capture,
              clips: int, dtype: str, rng: np.random.Generator) -> Privatized:
    """Encode exactly `clips` clips (the real ones, then blank placeholders), sample z.

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
    z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape, dtype=np.float32)
    payloads = [encode_payload(row, dtype) for row in z]
    dummy = encode_payload(np.zeros(model_cfg.latent_dim, np.float32), dtype)
    return Privatized(payloads[:real], dummy, kl_bits(mu[:real], logvar[:real]))


def _hour(hour: int) -> int | None:
    """A clip's hour of capture for the batch; footage that gives none (-1) says unknown."""
    return None if int(hour) < 0 else int(hour)


def assemble(privatized: Privatized, capture: Capture, clips: int, sent: int, charge: int,
             before: int, version: str) -> Batch:
    """The batch: the first `sent` real clips, then dummies up to `clips` records."""
    records = [UploadRecord(privatized.payloads[i], int(capture.days[i]),
                            _hour(capture.hours[i]), str(capture.clip_ids[i]), True)
               for i in range(sent)]
    records += [UploadRecord(privatized.dummy, 0, 0, "", False)] * (clips - sent)
    return Batch(tuple(records), version, charge, before, sent < len(capture.clip_ids))


def answer_upload(request: UploadRequest, model_cfg: EncoderConfig,
                  arrays: Mapping[str, np.ndarray], capture: Capture, ledger: InfoLedger,
                  own_cap: float | None, rng: np.random.Generator) -> bytes:
    """The device's whole answer: check the model, privatize, charge the ledger, encode.

    The ledger is charged (on disk) before the batch exists, so a crash after it can only
    over-count. The device counts from the larger of its own total and the server's (a
    lost or restored-from-old-backup file cannot lower the spend below what was recorded
    upstream), and its cap is the smaller of its own and the registry's.
    """
    version = encoder_version(model_cfg, arrays)
    if version != request.encoder_version:
        raise UploadRefused(f"the arrays sent are encoder {version[:12]}, the request names "
                            f"{request.encoder_version[:12]}: refusing to upload")
    privatized = privatize(model_cfg, arrays, capture, request.clips, request.dtype, rng)
    caps = [c for c in (own_cap, request.info_bits_cap or None) if c is not None]
    spend = ledger.spend(request.run_id, request.collection, privatized.bits,
                         min(caps) if caps else None, floor=request.server_bits)
    batch = assemble(privatized, capture, request.clips, spend.clips, spend.bits,
                     spend.before, version)
    return seal(batch, request) if request.unlinkable else encode_batch(batch)


def seal(batch: Batch, request: UploadRequest) -> bytes:
    """The SEALED reply to an unlinkable request: every record stripped of what links it
    (clip id -> fresh pseudonym, day -> window, hour dropped), sealed twice."""
    inner = [InnerRecord(r.payload, coarsen_day(r.day, request.time_granularity_days),
                         new_pseudonym(), r.real) for r in batch.records]
    outer = seal_batch(inner, request.analyzer_key, request.shuffler_key,
                       inner_context(request.run_id, request.collection, batch.encoder_version),
                       outer_context(collection_label(request.run_id, request.collection)))
    return encode_sealed(SealedBatch(outer, len(batch.records), len(batch.real),
                                     batch.encoder_version, batch.bits,
                                     batch.device_bits_before, batch.capped))
