"""Deterministic stand-in for enrollment keys in simulation (NOT for deployment).

In a simulated federation there is no registry bundle on each virtual device, so device
d's EC P-384 enrollment key is derived from (run seed, d) with HKDF-SHA256, and the
"registry-issued" identities are the matching public keys. Anyone who knows the seed can
derive every key: this exercises the signing and verification paths exactly as in
deployment, but authenticates nothing. On a real device the key comes from its
enrollment bundle (`fedmsr fleet enroll`) and the identities from the registry.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# order of the P-384 group
_P384_ORDER = int("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
                  "581a0db248b0a77aecec196accc52973", 16)


@lru_cache(maxsize=4096)  # pure, and a device's every stage needs all its peers' keys
def device_key(seed: int, device: int) -> ec.EllipticCurvePrivateKey:
    material = HKDF(algorithm=hashes.SHA256(), length=64, salt=None,
                    info=b"fedmsr-simulated-enrollment/" + str(seed).encode() + b"/"
                    + str(device).encode()).derive(b"fedmsr-simulation-only")
    scalar = int.from_bytes(material, "big") % (_P384_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP384R1())


def identities(seed: int, devices: Iterable[int]) -> dict[int, ec.EllipticCurvePublicKey]:
    return {d: device_key(seed, d).public_key() for d in devices}
