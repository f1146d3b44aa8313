"""Masks: agreed seeds (X25519 + HKDF-SHA256) expanded by ChaCha20 into Z_{2^k} vectors.

Why not NumPy: Flower's own mask generator folds the seed to 32 bits and feeds the Mersenne
Twister (flwrlabs/flower#7522), so masks are predictable. Here a 256-bit seed keys
ChaCha20; its keystream, read as little-endian unsigned words and reduced mod 2^k (k <=
word size, so reduction keeps uniformity exactly), is the mask. ChaCha20 over a zero
buffer viewed as a NumPy array is also the fast path (~1 GB/s on one core).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privacy.secagg.encoding import dtype_for, reduce

SEED_BYTES = 32
# ChaCha20 in `cryptography` takes a 16-byte nonce: 4-byte block counter + 12-byte nonce.
# Every seed is used for exactly one stream, so a fixed nonce is safe.
_NONCE = b"\x00" * 4 + b"fedmsr-mask\x00"


def derive(secret: bytes, label: bytes, context: bytes, length: int = SEED_BYTES) -> bytes:
    """HKDF-SHA256 with a label and the round context, so keys never cross rounds or uses."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None,
                info=b"fedmsr-secagg/" + label + b"/" + context).derive(secret)


def agree(private: X25519PrivateKey, peer_public: bytes, label: bytes, context: bytes) -> bytes:
    """A 32-byte secret both ends compute from their own private and the other's public key."""
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return derive(shared, label, context)


def expand(seed: bytes, length: int, bits: int) -> np.ndarray:
    """A uniform vector of Z_{2^bits}^length from a 32-byte seed (ChaCha20 keystream)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"mask seeds are {SEED_BYTES} bytes")
    dtype = dtype_for(bits)
    buffer = bytearray(length * dtype.itemsize)
    encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    encryptor.update_into(buffer, buffer)  # keystream XOR zeros, in place: no extra copy
    words = np.frombuffer(buffer, dtype=dtype.newbyteorder("<"))
    return reduce(words.astype(dtype, copy=False), bits)


def pairwise_sign(me: int, peer: int) -> int:
    """+1 if me < peer else -1: the two ends of a pair add opposite masks that cancel."""
    if me == peer:
        raise ValueError("no pairwise mask with oneself")
    return 1 if me < peer else -1


PAIRWISE_LABEL = b"pairwise-mask"
SELF_LABEL = b"self-mask"


def self_mask(seed: bytes, context: bytes, length: int, bits: int) -> np.ndarray:
    """A device's self mask b_u expanded (the server rebuilds it from t shares of `seed`)."""
    return expand(derive(seed, SELF_LABEL, context), length, bits)


def pairwise_mask(own_mask_key: X25519PrivateKey, peer_mask_pk: bytes, context: bytes,
                  length: int, bits: int) -> np.ndarray:
    """The mask both ends of a pair derive; one adds it, the other subtracts it."""
    return expand(agree(own_mask_key, peer_mask_pk, PAIRWISE_LABEL, context), length, bits)
