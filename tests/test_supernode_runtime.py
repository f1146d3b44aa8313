"""The device's SuperNode runtime: the pull interval while a run is active, the object-pull
back-off, and the warm SuperExec that forks each ClientApp (fl_client.supernode_polling,
privacy.wire.object_pulls, fl_client.warm_clientapp). The deployed runs in
test_deployment.py run every message through them; these tests pin each piece."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from flwr.supercore.inflatable import inflatable_utils

from fl_client import supernode_polling, warm_clientapp
from fl_client.adaptive_clock import AdaptiveClock
from fl_client.supernode_polling import (
    ACTIVE_FOR_S,
    ACTIVE_PULL_S,
    REPLY_POLL_S,
    install,
    supernode_clock,
)
from privacy.wire.object_pulls import shorten_object_pull_backoff

ROOT = Path(__file__).resolve().parents[1]


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_idle_pull_is_short_only_while_a_run_talks_to_the_node() -> None:
    fake = FakeTime()
    clock = supernode_clock()
    clock._monotonic, clock._sleep = fake.monotonic, fake.sleep  # noqa: SLF001
    clock.sleep(3)  # nothing received yet: Flower's own 3 s
    clock.note()  # a message: the run is active
    clock.sleep(3)
    clock.sleep(0.5)  # the reply wait polls local state
    clock.sleep(1.25)  # any other sleep is left alone
    fake.now += ACTIVE_FOR_S  # quiet for ACTIVE_FOR_S: back to Flower's interval
    clock.sleep(3)
    assert fake.slept == [3, ACTIVE_PULL_S, REPLY_POLL_S, 1.25, 3]
    assert clock.perf_counter is time.perf_counter  # everything else is the time module


def test_the_executors_task_poll_is_short_only_after_a_launch() -> None:
    fake = FakeTime()
    clock = AdaptiveClock(warm_clientapp.FLOWER_TASK_POLL_S, warm_clientapp.TASK_POLL_S,
                          warm_clientapp.ACTIVE_FOR_S, monotonic=fake.monotonic,
                          sleep=fake.sleep)
    clock.sleep(1.0)
    clock.note()
    clock.sleep(1.0)
    clock.sleep(0.5)  # not the idle poll: unchanged
    assert fake.slept == [1.0, warm_clientapp.TASK_POLL_S, 0.5]


def test_install_patches_flowers_supernode_loop_and_refuses_an_unknown_one() -> None:
    from flwr.supernode import start_client_internal

    # The Flower this project pins has exactly what the shim patches.
    assert start_client_internal.time is time
    assert callable(start_client_internal._pull_and_store_message)  # noqa: SLF001
    calls: list[int | None] = []

    def pull(**kw: int | None) -> int | None:
        calls.append(kw["run"])
        return kw["run"]

    fake = types.SimpleNamespace(time=time, _pull_and_store_message=pull)
    clock = supernode_clock()
    assert install(fake, clock)
    assert fake.time is clock
    assert fake._pull_and_store_message(run=None) is None  # noqa: SLF001
    assert clock.last_activity == float("-inf")  # nothing pulled: still idle
    assert fake._pull_and_store_message(run=7) == 7 and calls == [None, 7]  # noqa: SLF001
    assert clock.last_activity > 0
    assert not install(types.SimpleNamespace(time=time), supernode_clock())
    assert not install(types.SimpleNamespace(_pull_and_store_message=print), supernode_clock())


@pytest.fixture
def flower_backoff():
    functions = [inflatable_utils.pull_objects,
                 inflatable_utils.pull_and_inflate_object_from_tree]
    saved = [dict(f.__kwdefaults__) for f in functions]
    yield
    for f, kwdefaults in zip(functions, saved, strict=True):
        f.__kwdefaults__.clear()
        f.__kwdefaults__.update(kwdefaults)


def _pull_with_two_misses() -> float:
    """Flower's pull_objects on an object that is 'unavailable' twice, then there."""
    misses = {"obj": 2}

    def pull(object_id: str) -> bytes:
        if misses[object_id]:
            misses[object_id] -= 1
            raise inflatable_utils.ObjectUnavailableError(object_id)
        return b"content"

    start = time.perf_counter()
    assert inflatable_utils.pull_objects(["obj"], pull) == {"obj": b"content"}
    return time.perf_counter() - start


def test_a_missed_object_is_asked_for_again_at_once(flower_backoff) -> None:
    assert _pull_with_two_misses() > 2.0  # Flower's default: 1 s, then 2 s (with jitter)
    assert shorten_object_pull_backoff()
    assert _pull_with_two_misses() < 0.5
    assert inflatable_utils.pull_and_inflate_object_from_tree.__kwdefaults__[
        "initial_backoff"] == 0.02


def test_a_forked_clientapp_loads_the_app_from_the_fab_not_the_executor() -> None:
    """The executor runs from the installed fedmsr; a child forgets those modules, so the
    ClientApp's `import fl_client...` resolves on the FAB directory Flower puts first."""
    script = """
import json, os, sys
from fl_client import warm_clientapp
warm_clientapp.preload(("numpy",))
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    warm_clientapp.forget_app_modules()
    left = sorted(m for m in sys.modules if m.split(".")[0] in warm_clientapp.APP_PACKAGES)
    os.write(w, json.dumps({"left": left, "numpy": "numpy" in sys.modules}).encode())
    os._exit(0)
os.close(w)
os.waitpid(pid, 0)
print(os.read(r, 10000).decode())
print(json.dumps({"parent": "fl_client.warm_clientapp" in sys.modules}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    child, parent = (json.loads(line) for line in done.stdout.strip().splitlines())
    assert child == {"left": [], "numpy": True}  # the app forgotten, the libraries kept
    assert parent == {"parent": True}


def test_the_device_runtime_is_the_patched_supernode_unless_stock(tmp_path) -> None:
    from fl_server import deployment

    bundle = types.SimpleNamespace(
        root=tmp_path, info={"superlink": "127.0.0.1:9092"},
        footage=lambda override: None, node_config=lambda footage: "device-index=0")
    warm = deployment.supernode_command(bundle, 5000)  # type: ignore[arg-type]
    stock = deployment.supernode_command(bundle, 5000, stock=True)  # type: ignore[arg-type]
    assert warm[:5] == [sys.executable, "-m", supernode_polling.__name__, "--isolation",
                        "process"]
    assert Path(stock[0]).name == "flower-supernode" and "--isolation" not in stock
    assert warm[5:] == stock[1:]  # the same SuperNode arguments otherwise
    assert deployment.warm_executor_command(5000, 77) == [
        sys.executable, "-m", "fl_client.warm_clientapp", "--runtime-api-address",
        "127.0.0.1:5000", "--parent-pid", "77"]


def test_the_warm_executor_preloads_without_starting_threads_a_fork_would_lose() -> None:
    """Only the main thread and OpenBLAS's worker (which re-creates itself in a child)
    exist after the preload; the first optimiser's import is among what is loaded."""
    script = """
import json, os, sys
from fl_client import warm_clientapp
missing = warm_clientapp.preload()
print(json.dumps({"missing": missing, "threads": len(os.listdir("/proc/self/task")),
                  "dynamo": "torch._dynamo" in sys.modules,
                  "app": sorted({m.split(".")[0] for m in sys.modules}
                                & set(warm_clientapp.APP_PACKAGES))}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["missing"] == [] and result["dynamo"]
    assert result["threads"] <= 2
    assert result["app"] == ["fl_client", "privacy"]  # the executor's own modules only
