"""The device's own clips for some days, through its footage source, cached.

Cached because a simulated device regenerates its footage from the fleet spec and is asked
for the same days at every check-in and every round; on a real device the source reads
its own storage. The cache key is (fleet spec, device, days): nothing the server could
vary to learn more than the footage source gives.
"""

from __future__ import annotations

from functools import lru_cache

from fl_client.clip_source import device_source
from privacy.clips import ClipBatch
from privacy.synthetic import FleetSpec


@lru_cache(maxsize=8)
def local_clips(spec: FleetSpec, device: int, days: range) -> ClipBatch:
    """The device's own footage for `days` (cached: a simulated device is asked every round)."""
    return device_source(spec, device).clips(days)
