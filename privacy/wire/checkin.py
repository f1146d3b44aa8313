"""The check-in before a round: the server's challenge, and a device's typed answer.

In a registry-backed run the server sends a fresh nonce; a device answers with its
registry id and an ECDSA signature, by its enrollment key, over `checkin_statement`,
which binds the key to this nonce, this run, the Flower node the reply comes from (a
reply relayed by another node fails to verify) and every other field of the answer: data
index, whether it is in the fleet, clip count, profile, device id, its own ledger report
and its refusal. A relay or a man in the middle that changes any of them (say, lowers the
reported ledger total, or removes a refusal) breaks the signature (`fedmsr-checkin/v2`;
v1 covered only nonce, run and node).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord

from privacy.wire.budget import DECLINED_KEY, LedgerReport

CHECKIN_STATEMENT_VERSION = "fedmsr-checkin/v2"


def checkin_statement(nonce: str, run_id: str, node_id: int, answer: CheckinAnswer) -> bytes:
    """What a device signs at check-in (see the module docstring): the challenge, the node
    and a canonical encoding of the answer's fields besides the signature itself."""
    return (f"{CHECKIN_STATEMENT_VERSION}\n{nonce}\n{run_id}\n{node_id}\n"
            f"{answer.canonical_fields()}").encode()


@dataclass(frozen=True)
class Challenge:
    """The server's check-in challenge; `bundles_dir` only in a registry-backed simulation
    (where the simulated enrollment's key bundles are)."""

    nonce: str
    run_id: str
    bundles_dir: str = ""

    def to_record(self) -> ConfigRecord:
        record = ConfigRecord({"nonce": self.nonce, "run-id": self.run_id})
        if self.bundles_dir:
            record["bundles-dir"] = self.bundles_dir
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Challenge:
        try:
            return cls(str(record["nonce"]), str(record["run-id"]),
                       str(record.get("bundles-dir", "")))
        except KeyError as exc:
            raise ValueError(f"malformed check-in challenge: missing {exc.args[0]}") from None


@dataclass(frozen=True)
class CheckinAnswer:
    """A device's answer to the roll call.

    A node whose device index is outside the planned fleet answers ``in_fleet=False`` and
    nothing else. In a DP run the device adds its own ledger's total (`ledger`) and, when
    its ledger says no to the round, the reason (`declined`).
    """

    device: int
    in_fleet: bool
    num_clips: int = 0
    profile: str = ""
    device_id: int | None = None
    signature: str = ""
    ledger: LedgerReport | None = None
    declined: str | None = None

    def to_record(self) -> ConfigRecord:
        flat: dict[str, Any] = {"device": self.device, "in-fleet": self.in_fleet}
        if self.in_fleet:
            flat.update({"num-clips": self.num_clips, "profile": self.profile})
        if self.device_id is not None:
            flat.update({"device-id": self.device_id, "signature": self.signature})
        if self.ledger is not None:
            flat.update(self.ledger.to_config())
        if self.declined is not None:
            flat[DECLINED_KEY] = self.declined
        return ConfigRecord(flat)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> CheckinAnswer:
        """Rebuild and validate; ValueError naming a missing or malformed field."""
        try:
            ledger = LedgerReport.from_config(record) if LedgerReport.present_in(record) else None
            declined = record.get(DECLINED_KEY)
            return cls(
                device=int(record["device"]), in_fleet=bool(record["in-fleet"]),
                num_clips=int(record.get("num-clips", 0)),
                profile=str(record.get("profile", "")),
                device_id=int(record["device-id"]) if "device-id" in record else None,
                signature=str(record.get("signature", "")),
                ledger=ledger, declined=None if declined is None else str(declined))
        except KeyError as exc:
            raise ValueError(f"malformed check-in answer: missing {exc.args[0]}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed check-in answer: {exc}") from None

    def canonical_fields(self) -> str:
        """The answer's fields but the signature, in one canonical text (sorted JSON keys,
        floats as exact hex), the same on both sides of the wire whatever the record's
        number types."""
        ledger = None if self.ledger is None else [
            float(self.ledger.epsilon).hex(), float(self.ledger.delta).hex(),
            int(self.ledger.events)]
        return json.dumps({
            "device": int(self.device), "in-fleet": bool(self.in_fleet),
            "num-clips": int(self.num_clips), "profile": str(self.profile),
            "device-id": None if self.device_id is None else int(self.device_id),
            "ledger": ledger, "declined": self.declined,
        }, sort_keys=True, separators=(",", ":"))

    @property
    def signed(self) -> bool:
        return self.device_id is not None and bool(self.signature)
