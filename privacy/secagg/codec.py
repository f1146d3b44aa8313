"""Protocol messages <-> flat dicts of ints, strings, bytes and lists of them.

Flat because that is what Flower's ConfigRecord holds, and because the workflow and the
device handlers must agree on one layout (this module is the only place defining it).
Maps {id: value} travel as two parallel lists; Shamir share values as 66-byte strings;
vectors as little-endian bytes. Also the flattening of a model's named arrays into the
one vector secure aggregation sums (sorted names, C order).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from privacy.secagg import field
from privacy.secagg.encoding import EncodingSpec
from privacy.secagg.errors import SecAggError
from privacy.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    MaskedInput,
    NeighbourKeys,
    RoundSetup,
    ShareKeys,
    SharesDelivery,
    UnmaskReply,
    UnmaskRequest,
)

Flat = dict[str, Any]

#: The keys of a flat `RoundSetup` (`setup_to_flat` writes exactly these).
SETUP_FIELDS = frozenset({"context", "participants", "k", "t", "seed", "clip", "bits",
                          "max-weight", "max-devices", "length", "colluding", "norm"})


def setup_to_flat(s: RoundSetup) -> Flat:
    e = s.encoding
    return {"context": s.round_context, "participants": list(s.participants),
            "k": s.neighbours, "t": s.threshold, "seed": s.graph_seed, "clip": float(e.clip),
            "bits": e.mod_bits, "max-weight": e.max_weight, "max-devices": e.max_devices,
            "length": s.vector_length, "colluding": s.max_colluding, "norm": float(e.norm)}


def setup_from_flat(f: Flat) -> RoundSetup:
    """Every field is required: a setup that leaves out the collusion bound or the norm
    would otherwise be read with a default the server never chose (and never signed for)."""
    missing = sorted(SETUP_FIELDS - f.keys())
    if missing:
        raise SecAggError(f"round setup lacks the field(s) {', '.join(missing)}")
    spec = EncodingSpec(float(f["clip"]), int(f["bits"]), int(f["max-weight"]),
                        int(f["max-devices"]), float(f["norm"]))
    return RoundSetup(bytes(f["context"]), tuple(int(p) for p in f["participants"]), int(f["k"]),
                      int(f["t"]), bytes(f["seed"]), spec, int(f["length"]), int(f["colluding"]))


def advertise_to_flat(a: AdvertiseKeys, prefix: str = "") -> Flat:
    return {prefix + "sender": a.sender, prefix + "cipher-pk": a.cipher_pk,
            prefix + "mask-pk": a.mask_pk, prefix + "signature": a.signature}


def advertise_from_flat(f: Flat) -> AdvertiseKeys:
    return AdvertiseKeys(int(f["sender"]), bytes(f["cipher-pk"]), bytes(f["mask-pk"]),
                         bytes(f["signature"]))


def neighbour_keys_to_flat(m: NeighbourKeys) -> Flat:
    return {"recipient": m.recipient, "senders": [k.sender for k in m.keys],
            "cipher-pks": [k.cipher_pk for k in m.keys], "mask-pks": [k.mask_pk for k in m.keys],
            "signatures": [k.signature for k in m.keys]}


def neighbour_keys_from_flat(f: Flat) -> NeighbourKeys:
    keys = tuple(AdvertiseKeys(int(s), bytes(c), bytes(m), bytes(g)) for s, c, m, g in
                 zip(_list(f, "senders"), _list(f, "cipher-pks"), _list(f, "mask-pks"),
                     _list(f, "signatures"), strict=True))
    return NeighbourKeys(int(f["recipient"]), keys)


def share_keys_to_flat(m: ShareKeys) -> Flat:
    ids = sorted(m.ciphertexts)
    return {"sender": m.sender, "to": ids, "boxes": [m.ciphertexts[i] for i in ids],
            "rejected": list(m.rejected)}


def share_keys_from_flat(f: Flat) -> ShareKeys:
    boxes = dict(zip((int(i) for i in _list(f, "to")), (bytes(b) for b in _list(f, "boxes")),
                     strict=True))
    return ShareKeys(int(f["sender"]), boxes, tuple(int(r) for r in _list(f, "rejected")))


def delivery_to_flat(m: SharesDelivery) -> Flat:
    ids = sorted(m.ciphertexts)
    return {"recipient": m.recipient, "from": ids, "boxes": [m.ciphertexts[i] for i in ids]}


def delivery_from_flat(f: Flat) -> SharesDelivery:
    boxes = dict(zip((int(i) for i in _list(f, "from")), (bytes(b) for b in _list(f, "boxes")),
                     strict=True))
    return SharesDelivery(int(f["recipient"]), boxes)


def masked_to_flat(m: MaskedInput) -> Flat:
    v = np.ascontiguousarray(m.vector)
    return {"sender": m.sender, "dtype": v.dtype.str, "vector": v.tobytes()}


def masked_from_flat(f: Flat, spec: EncodingSpec) -> MaskedInput:
    dtype = np.dtype(str(f["dtype"]))
    if dtype.newbyteorder("=") != spec.dtype.newbyteorder("="):
        raise SecAggError(f"masked input has dtype {dtype}, expected {spec.dtype}")
    return MaskedInput(int(f["sender"]), np.frombuffer(bytes(f["vector"]), dtype=dtype)
                       .astype(spec.dtype))


def consistency_request_to_flat(m: ConsistencyRequest) -> Flat:
    return {"recipient": m.recipient, "survivor-set": list(m.survivors)}


def consistency_request_from_flat(f: Flat) -> ConsistencyRequest:
    return ConsistencyRequest(int(f["recipient"]),
                              tuple(int(i) for i in _list(f, "survivor-set")))


def consistency_signature_to_flat(m: ConsistencySignature) -> Flat:
    return {"sender": m.sender, "signature": m.signature}


def consistency_signature_from_flat(f: Flat) -> ConsistencySignature:
    return ConsistencySignature(int(f["sender"]), bytes(f["signature"]))


def unmask_request_to_flat(m: UnmaskRequest) -> Flat:
    return {"recipient": m.recipient, "survivors": list(m.survivors), "dropped": list(m.dropped),
            "survivor-set": list(m.survivor_set),
            "signers": [s for s, _ in m.signatures], "signatures": [g for _, g in m.signatures]}


def unmask_request_from_flat(f: Flat) -> UnmaskRequest:
    signatures = tuple((int(s), bytes(g)) for s, g in
                       zip(_list(f, "signers"), _list(f, "signatures"), strict=True))
    return UnmaskRequest(int(f["recipient"]), tuple(int(i) for i in _list(f, "survivors")),
                         tuple(int(i) for i in _list(f, "dropped")),
                         tuple(int(i) for i in _list(f, "survivor-set")), signatures)


def unmask_reply_to_flat(m: UnmaskReply) -> Flat:
    s_ids, k_ids = sorted(m.self_mask_shares), sorted(m.key_shares)
    return {"sender": m.sender, "self-ids": s_ids,
            "self-shares": [field.to_bytes(m.self_mask_shares[i]) for i in s_ids],
            "key-ids": k_ids, "key-shares": [field.to_bytes(m.key_shares[i]) for i in k_ids]}


def unmask_reply_from_flat(f: Flat) -> UnmaskReply:
    def shares(ids: str, values: str) -> dict[int, int]:
        return {int(i): field.from_bytes(bytes(v))
                for i, v in zip(_list(f, ids), _list(f, values), strict=True)}
    return UnmaskReply(int(f["sender"]), shares("self-ids", "self-shares"),
                       shares("key-ids", "key-shares"))


def flatten(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """One float64 vector of every array, in sorted-name order (both sides use this)."""
    return np.concatenate([np.asarray(arrays[k], dtype=np.float64).ravel()
                           for k in sorted(arrays)])


def unflatten(vector: np.ndarray, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for k in sorted(like):
        size = like[k].size
        out[k] = vector[offset:offset + size].reshape(like[k].shape).astype(like[k].dtype)
        offset += size
    if offset != vector.size:
        raise SecAggError(f"vector has {vector.size} values, the model {offset}")
    return out


def _list(f: Flat, key: str) -> list[Any]:
    """Empty lists may be absent (Flower records cannot type an empty list)."""
    return list(f.get(key, []))
