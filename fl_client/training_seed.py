"""The seed of a device's local round, and the device secret a DP round's seed comes from.

Without DP the seed is public on purpose: derived from the run seed, the round and the
device, so runs are exactly reproducible and a resumed round redoes what it would have
done. With DP-SGD it must be a secret of the device: whoever knows the seed can
regenerate the Gaussian noise (and the Poisson batches) and subtract it from the update.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fl_client.device_ledger import DeviceLedgerError
from privacy.wire.instructions import Instructions

#: The device's DP training secret (32 bytes, 0600), next to its ledger; never sent anywhere.
SECRET_NAME = "dp-training.secret"


def round_seed(base_seed: int, server_round: int, device: int) -> int:
    """A per-(round, device) seed: resumed rounds redo exactly what they would have done."""
    return int(np.random.SeedSequence([base_seed, server_round, device]).generate_state(1)[0])


def training_seed(instructions: Instructions, device: int, secret: bytes | None = None,
                  run_id: str = "", inputs_digest: bytes = b"") -> int:
    """The seed of this device's local round (see the module docstring).

    A device with a ledger keeps a training secret next to it and derives a DP round's seed
    as HMAC(secret, run, round, device, digest of the inputs). A round the server redoes
    after a crash (same run, round and global model) then reproduces the *same* release
    instead of a second, freshly noised one, so the ledgers' one event per (device, run,
    round) is exact, never an under-count; any other input gets independent noise (reusing
    noise on different inputs would let a difference cancel it). Without a ledger: the OS
    CSPRNG.
    """
    if not instructions.train.dp_sgd:
        return round_seed(instructions.train.seed, instructions.server_round, device)
    if secret is None:
        return secrets.randbits(63)
    label = f"fedmsr-dp-train/v1\n{run_id}\n{instructions.server_round}\n{device}\n".encode()
    mac = hmac.new(secret, label + inputs_digest, hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "big") >> 1


def inputs_digest(global_arrays: dict[str, np.ndarray], instructions: Instructions,
                  discriminator: dict[str, np.ndarray] | None = None) -> bytes:
    """SHA-256 of what a round's training starts from: the global arrays, the plan and,
    with identity-invariant training, the device discriminator's arrays (a different
    discriminator is a different release and must get different noise)."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(instructions), sort_keys=True,
                                  default=str).encode())
    _hash_arrays(h, global_arrays)
    if discriminator is not None:
        h.update(b"discriminator")
        _hash_arrays(h, discriminator)
    return h.digest()


def _hash_arrays(h: Any, arrays: dict[str, np.ndarray]) -> None:
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
        h.update(value.tobytes())


def training_secret(directory: Path) -> bytes:
    """The device's training secret, created once; concurrent first uses agree on one (the
    file appears complete or not at all: written aside, then hard-linked into place)."""
    path = directory / SECRET_NAME
    directory.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".secret-")  # 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp, path)  # fails if another process got there first: theirs wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    secret = path.read_bytes()
    if len(secret) != 32:
        raise DeviceLedgerError(f"{path} is corrupt ({len(secret)} bytes, expected 32): "
                                "refusing to train with DP")
    return secret
