"""What a device is provisioned with for unlinkable collection, out of band: the shuffler's
public key and the least it accepts (capture-time window, crowd).

Why pinned: the outer layer hides which inner ciphertexts a device sent only from parties
without the shuffler's key. If the server could name the shuffler key in its request, it
would name its own, open every outer blob and see each sender's inner ciphertexts, and
the shuffle would hide nothing. So a device seals only to the key it was provisioned
with, and refuses an unlinkable request naming any other (`fl_client.uploads`); a device
with no pinned key refuses every unlinkable request. The minimum crowd travels inside the
outer blob, where only the shuffler reads it, so the shuffler enforces what the device
asked for even if the server names a laxer crowd anywhere else.

Where a device gets it: node config (``shuffler-key=<hex>``, optional
``min-time-granularity-days``, ``min-crowd``) on a real SuperNode, put there by the
operator who deploys the device; in a simulation, `PIN_FILE` in the device's enrollment
bundle, written by `fedmsr run --shuffler` from the key it fetched at run start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from privacy.checks import is_int
from privacy.shuffle.sealed import KEY_BYTES

PIN_FILE = "shuffler.json"
MAX_PINNED_CROWD = 255  # the outer batch carries the device's minimum crowd in one byte


@dataclass(frozen=True)
class ShufflerPin:
    public_key: bytes  # raw X25519 public key of the one shuffler the device seals to
    min_time_granularity_days: int = 1  # a request may drop capture time (0) or coarsen
    # it to at least this many days; never less
    min_crowd: int = 2  # the shuffler must release this device's records only in a crowd
    # of at least this many senders

    def __post_init__(self) -> None:
        if len(self.public_key) != KEY_BYTES:
            raise ValueError(f"pinned shuffler key must be a {KEY_BYTES}-byte X25519 public "
                             f"key, got {len(self.public_key)} bytes")
        if not 1 <= self.min_time_granularity_days <= 3650:
            raise ValueError(f"pinned min-time-granularity-days must be 1..3650, got "
                             f"{self.min_time_granularity_days}")
        if not 2 <= self.min_crowd <= MAX_PINNED_CROWD:
            raise ValueError(f"pinned min-crowd must be 2..{MAX_PINNED_CROWD}, got "
                             f"{self.min_crowd}")

    def refusal(self, shuffler_key: bytes, granularity_days: int) -> str | None:
        """Why the device refuses a request naming this key and window (None: it accepts)."""
        if shuffler_key != self.public_key:
            return (f"the request names shuffler key {shuffler_key.hex()[:16]}..., the device "
                    f"is pinned to {self.public_key.hex()[:16]}...: refusing to upload")
        if 0 < granularity_days < self.min_time_granularity_days:
            return (f"the request coarsens capture days to {granularity_days}-day windows, "
                    f"the device accepts at least {self.min_time_granularity_days}: refusing "
                    f"to upload")
        return None

    def to_json(self) -> str:
        return json.dumps({"public_key": self.public_key.hex(),
                           "min_time_granularity_days": self.min_time_granularity_days,
                           "min_crowd": self.min_crowd})

    @classmethod
    def from_json(cls, text: str) -> ShufflerPin:
        """ValueError (one line, naming the field) for anything but a valid pin."""
        try:
            data = json.loads(text)
            key = bytes.fromhex(data["public_key"])
            window, crowd = data.get("min_time_granularity_days", 1), data.get("min_crowd", 2)
        except KeyError as exc:
            raise ValueError(f"shuffler pin lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError):
            raise ValueError("shuffler pin is not JSON with a hex public_key") from None
        if not (is_int(window) and is_int(crowd)):
            raise ValueError("shuffler pin: min_time_granularity_days and min_crowd must be "
                             "integers")
        return cls(key, int(window), int(crowd))
