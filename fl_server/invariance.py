"""The server half of identity-invariant training: fit the device discriminator.

With ``--invariance-weight W`` (needs ``--collect-every``), after each collection the
server fits a small classifier ``p(device | z)`` (privacy.identity_adversary) on the
representations it just stored for the current encoder version, each tagged with the
device that uploaded it. Its arrays travel with the global model in every following train
message (`privacy.wire.keys.DISCRIMINATOR_KEY`), and devices add ``W * (log K - H(p(d|z)))``
per clip to their loss: the encoder learns to leave the discriminator uncertain.

The only label used is the device id of each stored row, which the server has by
construction (it asked that device). A store that keeps no device id per row (unlinkable
storage) gives nothing to fit on: :class:`UnlinkableStore` says so.

Determinism: the fit is a function of the stored rows (sorted by device, then clip id)
and of ``seed + collection round``, so a resumed run refits exactly the discriminator it
had before the crash (`fl_server.collection.Collector.discriminator`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from privacy.identity_adversary import Discriminator, fit_discriminator
from privacy.payload import decode_payload


class UnlinkableStore(ValueError):
    """The stored representations carry no device id: no device discriminator can be fit."""

    def __init__(self) -> None:
        super().__init__("the representation store keeps no device id per row (unlinkable), so "
                         "the device discriminator cannot be fitted: run without "
                         "--invariance-weight")


@dataclass(frozen=True)
class FittedDiscriminator:
    """A fitted discriminator and the figures a round's history records about it."""

    discriminator: Discriminator
    encoder_version: str
    devices: int
    clips: int
    #: accuracy of the discriminator on the rows it was fitted on: how readable the device
    #: is from the current encoder's releases (chance is about 1 / devices)
    device_accuracy: float

    def figures(self) -> dict[str, Any]:
        return {"encoder_version": self.encoder_version, "devices": self.devices,
                "clips": self.clips, "device_accuracy": self.device_accuracy}


def fit_on_rows(rows: Sequence[Any], encoder_version: str, seed: int) -> FittedDiscriminator | str:
    """Fit on stored representation rows (``device_id``, ``clip_id``, ``payload``); a
    reason string when they cannot be fit (fewer than two devices)."""
    if any(getattr(r, "device_id", None) is None for r in rows):
        raise UnlinkableStore()
    ordered = sorted(rows, key=lambda r: (r.device_id, r.clip_id))
    devices = sorted({r.device_id for r in ordered})
    if len(devices) < 2:
        return f"representations of {len(devices)} device(s) stored; the discriminator needs >= 2"
    index = {d: i for i, d in enumerate(devices)}
    z = np.stack([decode_payload(r.payload) for r in ordered]).astype(np.float32)
    labels = np.array([index[r.device_id] for r in ordered], np.int64)
    disc = fit_discriminator(z, labels, seed)
    accuracy = float(np.mean(disc.predict_proba(z).argmax(-1) == labels))
    return FittedDiscriminator(disc, encoder_version, len(devices), len(ordered), accuracy)


def collected_version(collection: Any) -> str | None:
    """The encoder version a round's history record says was collected (None: no collection)."""
    if not isinstance(collection, dict):
        return None
    inner = collection.get("collection")
    version = inner.get("encoder_version") if isinstance(inner, dict) else None
    return version if isinstance(version, str) else None
