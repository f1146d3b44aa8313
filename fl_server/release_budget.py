"""A collection's randomized release on the registry's privacy ledger.

With `fedmsr run --release-epsilon`, every upload is the Gaussian mechanism of
`privacy.release_mechanism`, and the server charges it like every other release
(`fl_server.privacy_ledger`), in the order every release follows:

1. **reserve before asking**: the event of the whole batch, ``event(M)`` (all M slots,
   whatever the device holds), is reserved for every device the collection is about to
   ask, in one transaction that checks each device's cap first; a device whose release
   would pass it is not asked, and the reason is audit-logged (``budget.release-refused``).
   A reserved release is spent for ever: a device that never answers stays charged (it
   may have released, its answer lost on the way);
2. **commit with the information rows**: the collection's transaction that appends the
   information-ledger rows also marks the answering devices' releases committed, so the
   two ledgers never disagree on what was collected;
3. **a restart asks no one twice**: the ledger holds one release per (device, run, round,
   kind); a device already charged a release in this round (reserved before a crash) is
   not asked again, since a second answer would be a second release (fresh noise) that
   the ledger could not hold. It stays charged for the first.

The device checks the same event against its own ledger and the registry's cap sent with
the request (`fl_client.uploads.reserve_release`), so neither side has to trust the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from fl_server import privacy_ledger
from fl_server.config import RunConfig
from fl_server.dp_modes import release_of
from fl_server.registry import audit
from fl_server.registry.db import session_scope
from fl_server.registry.models import Device, PrivacyEvent
from privacy.accounting import DpEvent, EventKind
from privacy.release_mechanism import GaussianRelease
from privacy.wire.round_record import ReleaseEpsilon

KIND = EventKind.RANDOMIZED_RELEASE
REFUSED_ACTION = "budget.release-refused"


def fleet_release(session: Session, device_ids: Iterable[int], delta: float
                  ) -> ReleaseEpsilon:
    """Max and mean over `device_ids` of each one's accumulated release epsilon."""
    values = list(privacy_ledger.kind_epsilons(session, KIND, delta, device_ids).values())
    return ReleaseEpsilon(max(values, default=0.0),
                          sum(values) / len(values) if values else 0.0, delta, len(values))


@dataclass(frozen=True)
class ReleaseTerms:
    """What one device's upload request says about the release (all 0: sampled uploads)."""

    clip_norm: float = 0.0
    noise_multiplier: float = 0.0
    epsilon_cap: float = 0.0  # the registry's cap for the device; 0 = none


class ReleaseBudget:
    """The run's randomized release and the registry ledger it is charged to."""

    def __init__(self, release: GaussianRelease, clips: int, url: str, run_id: str,
                 delta: float, default_cap: float | None) -> None:
        self.release, self.clips, self.url = release, clips, url
        self.run_id, self.delta, self.default_cap = run_id, delta, default_cap

    @classmethod
    def for_config(cls, cfg: RunConfig, url: str) -> ReleaseBudget | None:
        release = release_of(cfg)
        if release is None:
            return None
        return cls(release, cfg.collect_clips, url, cfg.run_id, cfg.delta, cfg.epsilon_cap)

    @property
    def event(self) -> DpEvent:
        """One upload's event: all M slots, real or dummy (content-independent)."""
        return self.release.event(self.clips)

    def terms(self, device: Device) -> ReleaseTerms:
        cap = device.epsilon_cap if device.epsilon_cap is not None else self.default_cap
        return ReleaseTerms(self.release.clip_norm, self.release.noise_multiplier, cap or 0.0)

    def released_before(self, session: Session, server_round: int,
                        device_ids: Iterable[int]) -> set[int]:
        """Devices already charged a release in this round (before a restart)."""
        ids = sorted(set(device_ids))
        return set(session.scalars(select(PrivacyEvent.device_id).where(
            PrivacyEvent.run_id == self.run_id, PrivacyEvent.round_number == server_round,
            PrivacyEvent.kind == KIND.value, PrivacyEvent.device_id.in_(ids)))) if ids else set()

    def reserve(self, server_round: int, device_ids: Iterable[int]) -> dict[int, str]:
        """Reserve the upload's event for each device (one transaction, caps checked);
        device id -> why it must not be asked, for those refused (audit-logged)."""
        ids = sorted(set(device_ids))
        result = privacy_ledger.reserve(
            self.url, self.run_id, server_round,
            [privacy_ledger.Release(i, self.event) for i in ids], self.delta, self.default_cap)
        refused = {r.device_id: _reason(r) for r in result.refused}
        if refused:
            with session_scope(self.url) as session:
                for device_id, reason in sorted(refused.items()):
                    audit.record(session, REFUSED_ACTION,
                                 {"reason": reason, "round": server_round,
                                  "noise_multiplier": self.release.noise_multiplier,
                                  "clips": self.clips},
                                 device_id=device_id, run_id=self.run_id)
        return refused

    def fleet(self, device_ids: Iterable[int]) -> ReleaseEpsilon:
        """After a collection: the run devices' accumulated release epsilon, at the run's
        delta (one figure for the whole fleet, whatever a device's own delta cap)."""
        with session_scope(self.url) as session:
            return fleet_release(session, device_ids, self.delta)

    def commit(self, session: Session, server_round: int, device_ids: Iterable[int]) -> None:
        """In the collection's transaction: the answering devices' releases committed."""
        privacy_ledger.commit_in(session, self.run_id, server_round, device_ids, KIND)


def _reason(refusal: privacy_ledger.Refusal) -> str:
    if refusal.reason:
        return f"privacy ledger not trusted: {refusal.reason}"
    return (f"randomized release would pass its epsilon cap {refusal.epsilon_cap:g} at "
            f"delta={refusal.delta:g} (spent {refusal.epsilon_spent:.4g})")
