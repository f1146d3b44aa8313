"""Binding a device's round keys to its enrollment identity (ECDSA P-384 / SHA-384).

The server relays public keys between devices; if it could substitute them it could
decrypt shares and unmask an update. Each device therefore signs (round context, its id,
its two X25519 public keys) with its enrollment private key, and every device checks its
neighbours' signatures against the public keys the registry issued at enrollment. The
round context is in the statement so a signature cannot be replayed into another round.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

STATEMENT_PREFIX = b"fedmsr-secagg-v1/keys"
SURVIVORS_PREFIX = b"fedmsr-secagg-v1/survivors"


def statement(context_digest: bytes, device_id: int, cipher_pk: bytes, mask_pk: bytes) -> bytes:
    if len(cipher_pk) != 32 or len(mask_pk) != 32:
        raise ValueError("X25519 public keys are 32 bytes")
    return (STATEMENT_PREFIX + context_digest + device_id.to_bytes(8, "big") + cipher_pk
            + mask_pk)


def survivors_statement(context_digest: bytes, signer: int, survivors: tuple[int, ...]) -> bytes:
    """What a device signs in the consistency check: the round's setup digest (which holds
    the run and round through the round context), its id and the survivor set U3."""
    ids = sorted(set(survivors))
    return (SURVIVORS_PREFIX + context_digest + signer.to_bytes(8, "big")
            + len(ids).to_bytes(8, "big") + b"".join(i.to_bytes(8, "big") for i in ids))


def sign_survivors(enrollment_key: ec.EllipticCurvePrivateKey, context_digest: bytes,
                   signer: int, survivors: tuple[int, ...]) -> bytes:
    _require_p384(enrollment_key.curve)
    return enrollment_key.sign(survivors_statement(context_digest, signer, survivors),
                               ec.ECDSA(hashes.SHA384()))


def verify_survivors(identity: ec.EllipticCurvePublicKey, signature: bytes,
                     context_digest: bytes, signer: int, survivors: tuple[int, ...]) -> bool:
    """True only for a valid signature by `identity` over exactly this survivor set."""
    if not isinstance(identity, ec.EllipticCurvePublicKey):
        return False
    try:
        _require_p384(identity.curve)
        identity.verify(signature, survivors_statement(context_digest, signer, survivors),
                        ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        return False
    return True


def _require_p384(curve: ec.EllipticCurve) -> None:
    if not isinstance(curve, ec.SECP384R1):
        raise ValueError(f"enrollment keys are EC P-384, got {curve.name}")  # noqa: TRY004 (callers treat any bad key alike)


def sign_keys(enrollment_key: ec.EllipticCurvePrivateKey, context_digest: bytes,
              device_id: int, cipher_pk: bytes, mask_pk: bytes) -> bytes:
    _require_p384(enrollment_key.curve)
    return enrollment_key.sign(statement(context_digest, device_id, cipher_pk, mask_pk),
                               ec.ECDSA(hashes.SHA384()))


def verify_keys(identity: ec.EllipticCurvePublicKey, signature: bytes, context_digest: bytes,
                device_id: int, cipher_pk: bytes, mask_pk: bytes) -> bool:
    """True only for a valid signature by `identity` over exactly these keys."""
    if not isinstance(identity, ec.EllipticCurvePublicKey):
        return False
    try:
        _require_p384(identity.curve)
        identity.verify(signature, statement(context_digest, device_id, cipher_pk, mask_pk),
                        ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        return False
    return True


def load_private_key(key: ec.EllipticCurvePrivateKey | bytes) -> ec.EllipticCurvePrivateKey:
    """An enrollment private key from a key object, PEM or OpenSSH bytes."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        loaded = key
    elif b"OPENSSH PRIVATE KEY" in key:
        loaded = serialization.load_ssh_private_key(key, password=None)  # type: ignore[assignment]
    else:
        loaded = serialization.load_pem_private_key(key, password=None)  # type: ignore[assignment]
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError("enrollment private key is not an EC key")  # noqa: TRY004
    _require_p384(loaded.curve)
    return loaded


def load_public_key(key: ec.EllipticCurvePublicKey | bytes | str) -> ec.EllipticCurvePublicKey:
    """A registry-issued identity from a key object, PEM or OpenSSH ('ecdsa-sha2-nistp384 …')."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        loaded = key
    else:
        data = (key.encode() if isinstance(key, str) else key).strip()  # as pasted
        if data.startswith(b"ecdsa-"):
            loaded = serialization.load_ssh_public_key(data)  # type: ignore[assignment]
        else:
            loaded = serialization.load_pem_public_key(data)  # type: ignore[assignment]
    if not isinstance(loaded, ec.EllipticCurvePublicKey):
        raise ValueError("identity is not an EC public key")  # noqa: TRY004
    _require_p384(loaded.curve)
    return loaded
