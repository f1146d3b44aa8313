"""Start Ray for the simulation engine, and start it again when its node start timed out.

Ray 2.55 gives a new node a fixed 30 s to register with its own GCS (a local constant in
`ray._private.node.Node.__init__`, not a setting). On a loaded machine the raylet can take
longer; `ray.init` then raises "The current node timed out during startup", and if that
happens inside Flower's backend (which calls `ray.init` itself when Ray is not running)
the simulation goes on with no devices: the run fails minutes later with "0 devices
checked in", far from its cause.

So the engine starts Ray itself, before `run_simulation`, with the arguments Flower would
pass (Flower skips its own `ray.init` when `ray.is_initialized()`), and starts it again
when the node start timed out. A failed start leaves its processes (GCS, raylet, agents)
running as this process's children with no node object to stop them, and a second start
beside them would compete for the same CPU that made the first one late: they are
killed first. Any other error from `ray.init` is not a slow machine and is raised as is.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from fl_server.proc_table import descendants, read_stat

#: Ray's message when its node did not register in time (the one failure worth retrying).
NODE_START_TIMEOUT = "timed out during startup"
#: Starts tried before the run fails: each one waits Ray's fixed 30 s at most.
DEFAULT_TRIES = 3
log = logging.getLogger("fedmsr.ray_start")


class RayStartError(RuntimeError):
    """Ray's node did not start within Ray's fixed wait, on every try."""

    def __init__(self, tries: int, cause: str) -> None:
        self.tries = tries
        super().__init__(
            f"Ray's node did not start in {tries} tries (Ray waits a fixed 30 s for each; "
            f"the machine is likely overloaded): {cause.splitlines()[0] if cause else ''}")


def flower_runtime_env() -> dict[str, dict[str, str]]:
    """The runtime environment Flower's Ray backend passes to `ray.init`.

    Ray's workers inherit the environment but not this process's `sys.path`, so Flower puts
    `sys.path` (then any PYTHONPATH already set) into PYTHONPATH, both here and for the
    workers; copied from `flwr`'s `RayBackend.init_ray` (1.42) so that a Ray started here
    runs the devices exactly as one started by Flower would.
    """
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    return {"env_vars": {"PYTHONPATH": pythonpath}}


def start_ray(init_args: Mapping[str, Any], *, tries: int = DEFAULT_TRIES,
              init: Callable[..., object] | None = None) -> int:
    """Start Ray with `init_args` (Flower's `init_args`); return the number of tries used
    (0 when Ray was already running).

    A start whose node timed out is retried up to `tries` starts in all, after its leftover
    processes are killed; then `RayStartError`. `init` stands in for `ray.init` in tests.
    """
    if tries < 1:
        raise ValueError(f"tries must be at least 1, got {tries}")
    if init is None:
        import ray

        if ray.is_initialized():  # as Flower's backend: a running Ray is used as it is
            return 0
        init = ray.init
    args = {"include_dashboard": False, **init_args}
    runtime_env = flower_runtime_env()
    for attempt in range(1, tries + 1):
        before = descendants(os.getpid())
        try:
            init(runtime_env=runtime_env, **args)
            return attempt
        except Exception as exc:
            if NODE_START_TIMEOUT not in str(exc):
                raise
            left = sorted(descendants(os.getpid()) - before)
            log.warning("Ray's node start timed out (try %d of %d); stopping its %d "
                        "processes", attempt, tries, len(left))
            kill_and_reap(left)
            if attempt == tries:
                raise RayStartError(tries, str(exc)) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def kill_and_reap(pids: list[int], wait_s: float = 5.0) -> None:
    """SIGKILL `pids`, reap those that are this process's children, wait for the rest."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait_s
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not ours to reap: gone once /proc says so
                stat = read_stat(pid)
                done = pid if stat is None or not stat.alive else 0
            if done:
                pending.discard(pid)
        if pending:
            time.sleep(0.02)

