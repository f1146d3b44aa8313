"""Budget-aware selection (strategies/budget_selection.py): only devices within their cap are
sampled, releases are reserved before any message leaves, too few devices end the run with
a message naming them. Against an in-memory ledger (a unit test of the selection) and against
the real privacy ledger on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import pytest

from fl_server import privacy_ledger
from fl_server.registry import db
from fl_server.registry_ledger import RegistryLedger
from privacy.accounting import DpEvent, EventKind, pld_epsilon, would_exceed
from privacy.wire.arrays import record_of
from strategies.budget_selection import BudgetExhausted, BudgetSelection, RoundPlan
from strategies.central_dp import CentralDpFedAvg, CentralDpParams
from strategies.seeded_fedavg import SeededFedAvg
from tests.test_privacy_ledger import fleet

DELTA = 1e-5
LOCAL = DpEvent(0.5, 1.0, 4)
CENTRAL = DpEvent(0.5, 2.0, 1, EventKind.CENTRAL_DP_FEDAVG)
ARRAYS = record_of({"w": __import__("numpy").zeros(3, dtype="float32")})
pytestmark = pytest.mark.usefixtures("task_identity")


@dataclasses.dataclass(frozen=True)
class Refused:
    device_id: int
    name: str
    epsilon_spent: float
    epsilon_cap: float
    delta: float


class MemoryLedger:
    """An in-memory BudgetLedger with the real accountant; logs every call in order."""

    def __init__(self, caps: Mapping[int, float | None]) -> None:
        self.caps = dict(caps)
        self.rows: dict[tuple[int, int, EventKind], DpEvent] = {}
        self.calls: list[str] = []
        self.refuse_at_reserve: set[int] = set()

    def history(self, device: int) -> list[DpEvent]:
        return [e for (d, _, _), e in self.rows.items() if d == device]

    def _refusal(self, device: int, planned: Sequence[DpEvent]) -> Refused | None:
        cap = self.caps[device]
        if cap is None or not would_exceed(self.history(device), planned, cap, DELTA):
            return None
        spent = pld_epsilon(self.history(device), DELTA) if self.history(device) else 0.0
        return Refused(device, f"cam-{device}", spent, cap, DELTA)

    def eligible(self, server_round, planned):
        self.calls.append("eligible")
        ok, out = [], []
        for device, events in planned.items():
            new = [e for e in events if (device, server_round, e.kind) not in self.rows]
            refusal = self._refusal(device, new)
            (out.append(refusal) if refusal else ok.append(device))
        return ok, out

    def reserve(self, server_round, releases):
        self.calls.append("reserve")
        ok, out = [], []
        for device, events in releases.items():
            new = [e for e in events if (device, server_round, e.kind) not in self.rows]
            refusal = self._refusal(device, new)
            if device in self.refuse_at_reserve:
                refusal = Refused(device, f"cam-{device}", 0.0, 1.0, DELTA)
            if refusal:
                out.append(refusal)
                continue
            for e in new:
                self.rows[(device, server_round, e.kind)] = e
            ok.append(device)
        return ok, out

    def commit(self, server_round, device_ids):
        self.calls.append(f"commit {server_round} {sorted(device_ids)}")


class Grid:
    def __init__(self, nodes: Sequence[int]) -> None:
        self.nodes = list(nodes)

    def get_node_ids(self):
        return list(self.nodes)


NODES = [10, 11, 12, 13]
IDS = {node: node - 9 for node in NODES}  # node 10 is ledger device 1, ...


def local_plan(nodes: Sequence[int] = NODES) -> RoundPlan:
    return RoundPlan(ledger_ids={n: IDS[n] for n in nodes}, if_sent={n: (LOCAL,) for n in nodes})


def seeded(fraction: float = 1.0, min_nodes: int = 1) -> SeededFedAvg:
    return SeededFedAvg(seed=3, fraction_train=fraction, min_train_nodes=min_nodes,
                        min_available_nodes=min_nodes)


def one_round(selection: BudgetSelection, strategy: SeededFedAvg, server_round: int,
              plan: RoundPlan) -> list[int]:
    """The nodes the round sends to: eligible, sampled by `strategy`, reserved."""
    return sorted(selection.select(server_round, plan, sorted(plan.ledger_ids), strategy.sample))


def cap_for(rounds: int, event: DpEvent) -> float:
    """A cap that `rounds` releases fit in and one more does not (reported figure)."""
    return (pld_epsilon([event] * rounds, DELTA) + pld_epsilon([event] * (rounds + 1), DELTA)) / 2


def test_an_exhausted_device_is_never_sampled_and_nothing_passes_a_cap() -> None:
    caps = {1: None, 2: cap_for(2, LOCAL), 3: None, 4: None}
    ledger = MemoryLedger(caps)
    selection, strategy = BudgetSelection(ledger, min_train_nodes=2), seeded(fraction=0.75)
    sent_to_2 = []
    for server_round in range(1, 13):
        sent = one_round(selection, strategy, server_round, local_plan())
        sent_to_2.append(11 in sent)
        assert len(sent) == 3
        # every message that left was reserved first: exactly the devices sent, charged
        charged = sorted(d for (d, r, _) in ledger.rows if r == server_round)
        assert charged == sorted(IDS[n] for n in sent)
    assert sum(sent_to_2) == 2  # sampled until its cap, never after
    assert pld_epsilon(ledger.history(2), DELTA) <= caps[2]
    assert ledger.calls.count("eligible") == ledger.calls.count("reserve") == 12


def test_too_few_devices_left_stop_the_round_with_names_and_caps() -> None:
    ledger = MemoryLedger({1: cap_for(1, LOCAL), 2: cap_for(1, LOCAL), 3: None, 4: None})
    selection, strategy = BudgetSelection(ledger, min_train_nodes=3), seeded()
    assert one_round(selection, strategy, 1, local_plan()) == NODES
    with pytest.raises(BudgetExhausted) as err:
        one_round(selection, strategy, 2, local_plan())
    message = str(err.value)
    assert "before round 2" in message and "2 device(s)" in message and "3 needed" in message
    for device in (1, 2):
        assert f"cam-{device} (id {device}: epsilon" in message
        assert f"cap {cap_for(1, LOCAL):g}" in message
    assert ledger.calls[-1] == "eligible"  # nothing reserved, nothing sent
    assert [r for (_, r, _) in ledger.rows].count(2) == 0


def test_a_device_the_reservation_refuses_gets_no_message() -> None:
    ledger = MemoryLedger(dict.fromkeys(IDS.values()))
    ledger.refuse_at_reserve = {2}  # another server spent it between pre-check and reserve
    selection = BudgetSelection(ledger, min_train_nodes=1)
    assert one_round(selection, seeded(), 1, local_plan()) == [10, 12, 13]
    assert selection.reserved[1] == [1, 3, 4]
    assert [r.name for r in selection.refused[1]] == ["cam-2"]
    selection.commit(1)
    assert ledger.calls[-1] == "commit 1 [1, 3, 4]"


def test_any_sampler_sees_only_the_eligible_devices() -> None:
    ledger = MemoryLedger({1: cap_for(0, LOCAL), 2: None, 3: None, 4: None})
    offered: list[list[int]] = []

    def everyone(nodes: list[int]) -> list[int]:  # a sampler that is no fedmsr strategy
        offered.append(list(nodes))
        return nodes

    selection = BudgetSelection(ledger, min_train_nodes=1)
    assert selection.select(1, local_plan(), NODES, everyone) == [11, 12, 13]
    assert offered == [[11, 12, 13]]  # node 10 (device 1, no budget) is never offered


def test_central_dp_charges_every_eligible_device_drawn_or_not() -> None:
    ledger = MemoryLedger({1: None, 2: None, 3: None, 4: cap_for(0, CENTRAL)})
    inner = CentralDpFedAvg(params=CentralDpParams(0.5, 2.0, 1.0), seed=0, min_train_nodes=1,
                            min_available_nodes=1)
    selection = BudgetSelection(ledger, min_train_nodes=2)
    plan = RoundPlan(ledger_ids={n: IDS[n] for n in NODES}, every_eligible=(CENTRAL,))
    drawn = one_round(selection, inner, 1, plan)
    assert inner.population == [10, 11, 12] and set(drawn) <= {10, 11, 12}
    assert sorted(d for (d, _, _) in ledger.rows) == [1, 2, 3]  # charged whether drawn or not
    assert all(k == EventKind.CENTRAL_DP_FEDAVG for (_, _, k) in ledger.rows)


def test_both_modes_charge_local_only_to_the_drawn() -> None:
    ledger = MemoryLedger(dict.fromkeys(IDS.values()))
    inner = CentralDpFedAvg(params=CentralDpParams(0.5, 2.0, 1.0), seed=0, min_train_nodes=1,
                            min_available_nodes=1)
    selection = BudgetSelection(ledger, min_train_nodes=1)
    plan = RoundPlan(ledger_ids={n: IDS[n] for n in NODES}, every_eligible=(CENTRAL,),
                     if_sent={n: (LOCAL,) for n in NODES})
    drawn = one_round(selection, inner, 1, plan)
    local = sorted(d for (d, _, k) in ledger.rows if k == EventKind.LOCAL_DP_SGD)
    assert local == sorted(IDS[n] for n in drawn)
    assert len([1 for (_, _, k) in ledger.rows if k == EventKind.CENTRAL_DP_FEDAVG]) == 4


# -- against the real ledger ---------------------------------------------------------------

def test_selection_on_the_real_ledger(registry_url, tmp_path) -> None:
    ids = fleet(registry_url, tmp_path, [None, cap_for(2, LOCAL), None])
    ledger = RegistryLedger(registry_url, "run-a", DELTA, default_cap=None)
    nodes = {20 + i: device for i, device in enumerate(ids)}
    selection, strategy = BudgetSelection(ledger, min_train_nodes=2), seeded()
    sent = []
    for server_round in (1, 2, 3, 4):
        plan = RoundPlan(ledger_ids=nodes, if_sent={n: (LOCAL,) for n in nodes})
        sent.append(one_round(selection, strategy, server_round, plan))
        selection.commit(server_round)
    assert sent == [[20, 21, 22], [20, 21, 22], [20, 22], [20, 22]]
    capped = privacy_ledger.budget_state(registry_url, ids[1], DELTA)
    assert len(capped.events) == 2 and capped.epsilon <= cap_for(2, LOCAL)
    assert {e.status for e in capped.events} == {"committed"}
    assert [r.name for r in selection.refused[3]] == ["cam-1"]


def test_a_resumed_round_at_the_edge_of_a_cap_is_not_charged_twice(registry_url,
                                                                   tmp_path) -> None:
    """Round 2 was reserved, then the server died. The device is now exactly at its cap:
    a fresh release would not fit, but re-planning round 2 must (it is already spent)."""
    (device,) = fleet(registry_url, tmp_path, [cap_for(2, LOCAL)])
    ledger = RegistryLedger(registry_url, "run-b", DELTA, default_cap=None)
    for server_round in (1, 2):
        assert ledger.reserve(server_round, {device: [LOCAL]}) == ([device], [])
    assert ledger.eligible(2, {device: [LOCAL]})[0] == [device]       # resume of round 2
    assert ledger.reserve(2, {device: [LOCAL]}) == ([device], [])     # idempotent
    assert privacy_ledger.ledger_event_count(registry_url) == 2       # no double charge
    ok, refused = ledger.eligible(3, {device: [LOCAL]})                # a new round: no
    assert ok == [] and refused[0].name == "cam-0"


def test_the_registry_accepts_the_budget_exhausted_status(registry_url, tmp_path) -> None:
    from fl_server.config import RunConfig
    from fl_server.registry_observer import RegistryObserver
    from fl_server.run_status import RunStatus

    db.upgrade(registry_url)
    cfg = RunConfig(runs_dir=str(tmp_path), run_id="ex", device_indices=[0]).validate()
    observer = RegistryObserver(registry_url)
    observer.run_started(cfg, 0)
    observer.run_finished(cfg, RunStatus("budget-exhausted", 3, completed_rounds=1,
                                         reason="privacy budget exhausted"))
    with db.session_scope(registry_url) as s:
        from fl_server.registry.models import Run
        assert s.get(Run, "ex").status == "budget-exhausted"
