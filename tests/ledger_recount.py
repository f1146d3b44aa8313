"""An independent recount of a run's privacy ledger, for the fault-injection suite.

After a run that was killed, resumed, lost devices or lost its database, the server's
ledger must hold exactly one row per (device, round) that was sent a train message: none
lost (an under-count), none doubled (a resume charging twice). The recount reads the rows
with plain SQL (not through `fl_server.privacy_ledger`), compares them with what the run
should have charged, and recomputes each device's epsilon with `dp_accounting`'s own PLD
accountant from the expected events, to compare with `fedmsr budget show --json`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from sqlalchemy import create_engine, text

from privacy.accounting import DpEvent
from tests.helpers import fedmsr
from tests.reference_memo import reference

#: The ledger reports a pessimistic PLD epsilon (never below the exact value); dp_accounting
#: at its default discretization agrees to well within this.
EPSILON_RTOL = 0.02


@dataclass(frozen=True)
class Row:
    device: str
    round_number: int
    kind: str
    status: str
    sample_rate: float
    noise_multiplier: float
    steps: int


def ledger_rows(url: str, run_id: str) -> list[Row]:
    """Every privacy_events row of `run_id`, by device name and round (plain SQL)."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT d.name, e.round_number, e.kind, e.status, e.sample_rate, "
                "e.noise_multiplier, e.steps FROM privacy_events e JOIN devices d "
                "ON d.id = e.device_id WHERE e.run_id = :run ORDER BY d.name, e.round_number"),
                {"run": run_id})
            return [Row(*row) for row in rows]
    finally:
        engine.dispose()


def mismatches(rows: Iterable[Row], expected: Iterable[tuple[str, int]],
               event: DpEvent) -> list[str]:
    """What is wrong with `rows` against the (device, round) pairs that were sent a train
    message, each charged `event`: [] when nothing is."""
    rows = list(rows)
    kind = event.kind.value
    planned = (event.sample_rate, event.noise_multiplier, event.steps)
    problems: list[str] = []
    counts = Counter((r.device, r.round_number) for r in rows)
    wanted = set(expected)
    problems += [f"{d} round {n}: {c} rows" for (d, n), c in sorted(counts.items()) if c > 1]
    problems += [f"{d} round {n}: missing" for d, n in sorted(wanted - set(counts))]
    problems += [f"{d} round {n}: charged but never sent" for d, n in sorted(set(counts) - wanted)]
    for r in rows:
        if (r.kind, (r.sample_rate, r.noise_multiplier, r.steps)) != (kind, planned):
            problems.append(f"{r.device} round {r.round_number}: {r.kind} "
                            f"({r.sample_rate}, {r.noise_multiplier}, {r.steps}), expected "
                            f"{kind} {planned}")
        if r.status not in ("reserved", "committed"):
            problems.append(f"{r.device} round {r.round_number}: status {r.status!r}")
    return problems


@reference
def independent_epsilon(events: Iterable[DpEvent], delta: float) -> float:
    """PLD epsilon of the composed events, from dp_accounting directly."""
    accountant = pld_privacy_accountant.PLDAccountant()
    for event in events:
        gaussian = dp_event.GaussianDpEvent(event.noise_multiplier)
        single = gaussian if event.sample_rate == 1.0 else \
            dp_event.PoissonSampledDpEvent(event.sample_rate, gaussian)
        accountant.compose(single, event.steps)
    return float(accountant.get_epsilon(delta))


def shown_budgets(url: str, delta: float) -> dict[str, dict]:
    """`fedmsr budget show --json`, by device name."""
    shown = fedmsr("--db", url, "budget", "show", "--json", "--delta", str(delta), timeout=120)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    devices = data["devices"] if isinstance(data, dict) else data
    return {d["name"]: d for d in devices}


def epsilon_mismatches(url: str, delta: float, rounds_by_device: dict[str, int],
                       event: DpEvent) -> list[str]:
    """Each device's epsilon in `fedmsr budget show` against its independent recount."""
    shown = shown_budgets(url, delta)
    problems = []
    for name, rounds in sorted(rounds_by_device.items()):
        want = independent_epsilon([event] * rounds, delta)
        got = float(shown[name]["epsilon"])
        # never below the exact figure (a ledger may over-count, never under-count); the
        # 1e-9 is float formatting, not slack
        if not want * (1 - 1e-9) <= got <= (1 + EPSILON_RTOL) * want:
            problems.append(f"{name}: budget show epsilon {got:.6g}, recount {want:.6g} "
                            f"over {rounds} release(s)")
    return problems


def sql_execute(url: str, sql: str, **params: object) -> None:
    """Run one SQL statement on the registry at `url` (a test playing a hostile operator)."""
    from fl_server.registry import db

    with db.get_engine(url).begin() as c:
        c.execute(text(sql), params)


def sql_rows(url: str, sql: str) -> list[tuple]:
    """The rows of one SQL query on the registry at `url`, as plain tuples."""
    from fl_server.registry import db

    with db.get_engine(url).connect() as c:
        return [tuple(r) for r in c.execute(text(sql))]


def mismatch_details(url: str) -> list[dict]:
    """What the ledger audited each time a device's cached vector disagreed with its rows
    (`budget.ledger-mismatch`), oldest first."""
    return [json.loads(d) for (d,) in sql_rows(
        url, "SELECT detail FROM audit_log WHERE action = 'budget.ledger-mismatch' ORDER BY id")]
