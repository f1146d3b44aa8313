"""Shared fixtures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Every Ray a test starts binds loopback only.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


@pytest.fixture(autouse=True)
def _registry_selection_is_restored():
    """`main(["--db", URL, ...])` in a test's own process sets the registry for that process
    and its children (`FEDMSR_DB`, as the real CLI must); the next test starts without it."""
    from fl_server.registry import db

    saved_env, saved_flag = os.environ.get(db.ENV_VAR), db._flag_url
    yield
    db._flag_url = saved_flag
    if saved_env is None:
        os.environ.pop(db.ENV_VAR, None)
    else:
        os.environ[db.ENV_VAR] = saved_env


#: Modules whose functions keep an lru_cache of accountant figures.
_CACHED_MODULES = ("privacy.accounting.pld", "privacy.accounting.rdp",
                   "privacy.accounting.calibration", "fl_server.privacy_ledger")


def pytest_collection_modifyitems(config, items) -> None:
    """Under mutmut (`scripts/mutation.sh`, which runs from `mutants/`), the fastest tests
    first, by the durations mutmut recorded: a mutant most tests catch is caught in seconds,
    not after the slowest test it reaches (mutmut itself passes them in no set order)."""
    stats = Path("mutmut-stats.json")
    if "MUTANT_UNDER_TEST" not in os.environ or not stats.is_file():
        return
    durations = json.loads(stats.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))


#: The (process, mutant) whose caches were last emptied.
_emptied_for: tuple[int, str] | None = None


@pytest.fixture(autouse=True)
def _accountant_caches_are_empty_under_mutation():
    """Under mutation testing (`scripts/mutation.sh`) each mutant's tests run in a process
    forked from one that may hold figures computed by the original code; a cached one would
    answer instead of the mutated function. There, the accountants' caches are emptied before
    the mutant's first test; its later tests share what the mutated code computes, as a
    test run shares what the original computes."""
    global _emptied_for
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if "__mutmut_" in mutant and _emptied_for != (os.getpid(), mutant):
        import sys

        for name in _CACHED_MODULES:
            module = sys.modules.get(name)
            for value in vars(module).values() if module else ():
                if callable(getattr(value, "cache_clear", None)):
                    value.cache_clear()
        _emptied_for = (os.getpid(), mutant)
    yield


@pytest.fixture
def task_identity():
    """Flower 1.42 stamps messages with the process's task identity; unit tests set one."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield TaskIdentity
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


# -- fleet registry (issue 3): every DB-touching test runs on SQLite and PostgreSQL ----------

#: The PostgreSQL every machine runs (DESIGN.md): loopback, trust auth, database `test`.
POSTGRES_ADMIN_URL = os.environ.get("FEDMSR_TEST_POSTGRES",
                                    "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request, tmp_path):
    """An empty database URL, isolated per test: a fresh SQLite file, or a fresh PostgreSQL
    schema (the URL pins `search_path` to it) dropped afterwards with everything in it."""
    from fl_server.registry.scratch import scratch_registry

    with scratch_registry(request.param, POSTGRES_ADMIN_URL, tmp_path,
                          prefix="fedmsr_test") as url:
        yield url


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP barrier stalls when the suite shares
    the 2 cores with other processes (no effect on results, which are thread-independent
    here; restored afterwards)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
