"""A sealed box: public-key encryption to one recipient, bound to a context string.

Built on RFC 9180 HPKE in base mode (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
AES-256-GCM) as `cryptography` implements it: a fresh ephemeral X25519 key per message, the
shared secret derived over (ephemeral public key, recipient public key) by the KEM, and the
caller's context in HPKE's `info`, which enters the key schedule. So a ciphertext opens only
with the recipient's private key *and* the exact context it was sealed for: a blob sealed for
one collection cannot be replayed into another, and an outer (shuffler) blob cannot be passed
off as an inner (analyzer) one. The sender is anonymous to the recipient (no sender key),
which is the point: the shuffler and the analyzer learn nothing from the box about who sealed it.

Length is exact and content-independent: ``len(seal(pk, m, c)) == len(m) + OVERHEAD``.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
KEY_BYTES = 32
OVERHEAD = KEM.X25519.enc_length() + 16  # the ephemeral public key, the GCM tag
_PEM_LABEL = b"-----BEGIN PRIVATE KEY-----"


class SealError(ValueError):
    """A sealed blob did not open: wrong key, wrong context, or tampered bytes.

    One reason for all three on purpose: telling them apart would be an oracle.
    """


def generate_private_key() -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.generate()


def public_bytes(key: x25519.X25519PrivateKey | x25519.X25519PublicKey) -> bytes:
    """The raw 32-byte public key (what travels in requests and over the shuffler's API)."""
    public = key.public_key() if isinstance(key, x25519.X25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_bytes(raw: bytes) -> x25519.X25519PublicKey:
    if len(raw) != KEY_BYTES:
        raise ValueError(f"an X25519 public key is {KEY_BYTES} bytes, got {len(raw)}")
    return x25519.X25519PublicKey.from_public_bytes(raw)


def private_key_pem(key: x25519.X25519PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: the file's permissions (0600) are its protection."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def private_key_from_pem(pem: bytes) -> x25519.X25519PrivateKey:
    """Load a key written by `private_key_pem`; ValueError if it is anything else."""
    if not pem.lstrip().startswith(_PEM_LABEL):
        raise ValueError("not a PKCS#8 PEM private key")
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, x25519.X25519PrivateKey):
        raise ValueError(f"expected an X25519 private key, got {type(key).__name__}")  # noqa: TRY004
    return key


def seal(recipient_public: bytes, plaintext: bytes, context: bytes) -> bytes:
    """Encrypt `plaintext` so that only the holder of the matching private key, asking with
    the same `context`, can read it. Output: ephemeral public key | AES-GCM ciphertext+tag."""
    if not context:
        raise ValueError("a sealed box needs a non-empty context")
    return _SUITE.encrypt(plaintext, public_key_from_bytes(recipient_public), info=context)


def open_sealed(private: x25519.X25519PrivateKey, blob: bytes, context: bytes) -> bytes:
    """The plaintext of `blob`; SealError (one line) if it was not sealed to this key and
    context or was altered after sealing."""
    if len(blob) < OVERHEAD:
        raise SealError(f"sealed blob too short: {len(blob)} bytes, at least {OVERHEAD}")
    try:
        return _SUITE.decrypt(blob, private, info=context)
    except (InvalidTag, ValueError):
        raise SealError("sealed blob does not open: wrong key, wrong context, "
                        "or the bytes were altered") from None
