"""The run's privacy ledger as selection sees it: `strategies.budget_selection.BudgetLedger`
over `fl_server.privacy_ledger`, keyed by registry device ids.

A resumed round is the one subtle case: releases reserved before the crash are already
spent, so the pre-check must not count them again (`_fits_after_resume`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fl_server import privacy_ledger
from fl_server.registry.devices import device_ids_for_indices
from privacy.accounting import DpEvent
from strategies.budget_selection import RefusalLike


class RegistryLedger:
    """`strategies.budget_selection.BudgetLedger` over `fl_server.privacy_ledger`."""

    def __init__(self, url: str, run_id: str, delta: float, default_cap: float | None) -> None:
        self.url, self.run_id, self.delta, self.default_cap = url, run_id, delta, default_cap
        self._ids: dict[int, int] = {}

    def device_ids(self, indices: Sequence[int]) -> dict[int, int]:
        """Synthetic index -> registry device id (cached for the run)."""
        missing = [i for i in indices if i not in self._ids]
        if missing:
            self._ids.update(device_ids_for_indices(self.url, missing))
        return {i: self._ids[i] for i in indices}

    def eligible(self, server_round: int, planned: Mapping[int, Sequence[DpEvent]]
                 ) -> tuple[list[int], list[RefusalLike]]:
        ok: list[int] = []
        refused: list[RefusalLike] = []
        for events, ids in _grouped(planned).items():
            fits, out = privacy_ledger.eligible(self.url, ids, events, self.delta,
                                                self.default_cap)
            ok += fits
            for refusal in out:  # a resumed round: what is already reserved is not new
                if self._fits_after_resume(server_round, refusal.device_id, events):
                    ok.append(refusal.device_id)
                else:
                    refused.append(refusal)
        return ok, refused

    def _fits_after_resume(self, server_round: int, device_id: int,
                           events: tuple[DpEvent, ...]) -> bool:
        """Only for a device the pre-check refused: its releases for this round that are
        already in the ledger (reserved before a crash) are spent, not planned."""
        state = privacy_ledger.budget_state(self.url, device_id, self.delta)
        done = {e.kind for e in state.events
                if e.run_id == self.run_id and e.round_number == server_round}
        if not done:
            return False
        left = tuple(e for e in events if e.kind.value not in done)
        if not left:
            return True
        fits, _ = privacy_ledger.eligible(self.url, [device_id], left, self.delta,
                                          self.default_cap)
        return bool(fits)

    def reserve(self, server_round: int, releases: Mapping[int, Sequence[DpEvent]]
                ) -> tuple[list[int], list[RefusalLike]]:
        flat = [privacy_ledger.Release(device, event)
                for device, events in sorted(releases.items()) for event in events]
        result = privacy_ledger.reserve(self.url, self.run_id, server_round, flat, self.delta,
                                        self.default_cap)
        return list(result.reserved), list(result.refused)

    def commit(self, server_round: int, device_ids: Sequence[int]) -> None:
        privacy_ledger.commit(self.url, self.run_id, server_round, device_ids)


def _grouped(planned: Mapping[int, Sequence[DpEvent]]) -> dict[tuple[DpEvent, ...], list[int]]:
    groups: dict[tuple[DpEvent, ...], list[int]] = {}
    for device, events in sorted(planned.items()):
        groups.setdefault(tuple(events), []).append(device)
    return groups
