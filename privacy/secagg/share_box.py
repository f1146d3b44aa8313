"""Encrypting Shamir shares from one device to a neighbour through the server.

Key: HKDF-SHA256 of the X25519 agreement between the two devices' cipher keys (signed,
so the server cannot sit in the middle). AES-256-GCM with a fresh random 96-bit nonce;
the round context and both ids are authenticated data, so the server can neither read,
alter, replay into another round nor redirect a share to another device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from privacy.secagg import field
from privacy.secagg.errors import ProtocolAbort
from privacy.secagg.masks import agree

_NONCE_BYTES = 12
_LABEL = b"share-box"


@dataclass(frozen=True)
class SharePair:
    """What a device holds for one neighbour: its self-mask share and its key share."""

    self_mask: int
    key: int


def _aad(context: bytes, sender: int, recipient: int) -> bytes:
    return context + sender.to_bytes(8, "big") + recipient.to_bytes(8, "big")


def seal(own: X25519PrivateKey, peer_pk: bytes, context: bytes, sender: int, recipient: int,
         shares: SharePair) -> bytes:
    key = agree(own, peer_pk, _LABEL, context)
    nonce = os.urandom(_NONCE_BYTES)
    plaintext = field.to_bytes(shares.self_mask) + field.to_bytes(shares.key)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(context, sender, recipient))


def open_box(own: X25519PrivateKey, peer_pk: bytes, context: bytes, sender: int,
             recipient: int, box: bytes) -> SharePair:
    key = agree(own, peer_pk, _LABEL, context)
    try:
        plaintext = AESGCM(key).decrypt(box[:_NONCE_BYTES], box[_NONCE_BYTES:],
                                        _aad(context, sender, recipient))
    except InvalidTag as err:
        raise ProtocolAbort(f"share from device {sender} fails authentication") from err
    size = field.ELEMENT_BYTES
    return SharePair(field.from_bytes(plaintext[:size]), field.from_bytes(plaintext[size:]))
