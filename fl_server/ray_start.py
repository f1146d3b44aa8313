"""Start Ray for the simulation engine, and start it again when its node start timed out.

Ray 2.55 gives a new node a fixed 30 s to register with its own GCS (a local constant in
`ray._private.node.Node.__init__`, not a setting). On a loaded machine the raylet can take
longer; `ray.init` then raises "The current node timed out during startup", and if that
happens inside Flower's backend (which calls `ray.init` itself when Ray is not running)
the simulation goes on with no devices: the run fails minutes later with "0 devices
checked in", far from its cause.

So the engine starts Ray itself, before `run_simulation`, with the arguments Flower's
backend would pass for fedmsr's backend configuration (Flower skips its own `ray.init`
when `ray.is_initialized()`), and starts it again when the node start timed out. The
failed start leaves its processes running (the GCS and raylet it started, the agents and
workers they started) with no node object in Ray's hands to stop them, and a second start
beside them would compete for the CPU that made the first one late; they are stopped
first: through the failed node's own `kill_all_processes` where the exception still holds
it, then every process the start added below this one, frozen before it is killed so that
none can start another meanwhile. Any other error from `ray.init` is not a slow machine
and is raised as is.

It runs before anything else in the engine starts processes: every process that appears
below the engine during a failed start is taken to be Ray's.
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
#: Starts tried before the run fails (each waits Ray's fixed 30 s for the raylet, after the
#: GCS has started).
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
    workers; as in `flwr`'s `RayBackend.init_ray` (1.42), so that a Ray started here runs
    the devices exactly as one started by Flower would.
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
    processes are stopped; then `RayStartError`. `init` stands in for `ray.init` in tests.
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
            log.warning("Ray's node start timed out (try %d of %d); stopping what it started",
                        attempt, tries)
            _stop_failed_node(exc)
            stop_new_descendants(before)
            if attempt == tries:
                raise RayStartError(tries, str(exc)) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _stop_failed_node(exc: BaseException) -> None:
    """Kill the processes of the Ray node whose start raised `exc`, through the node itself.

    `ray.init` drops the half-started node when its constructor raises, but the traceback
    still holds it (`self` of `Node.__init__`), with the `Popen` of each process it started:
    killing through those reaps them as Ray would, instead of leaving the `Popen` objects
    to poll pids that may be reused.
    """
    tb = exc.__traceback__
    while tb is not None:
        node: Any = tb.tb_frame.f_locals.get("self")
        if type(node).__module__ == "ray._private.node" and type(node).__name__ == "Node":
            try:
                node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
            except Exception as error:  # the sweep below still stops every process
                log.warning("stopping the failed Ray node through Ray: %s", error)
            return
        tb = tb.tb_next


def stop_new_descendants(before: set[int], wait_s: float = 5.0) -> list[int]:
    """Stop every process below this one that is not in `before`; return the ones stopped.

    Each is frozen first (SIGSTOP) and the tree read again until no new process appears,
    so none can start another (which, orphaned by the kill, would escape to pid 1); then
    all are killed together and reaped where they are this process's children.
    """
    frozen: set[int] = set()
    while new := descendants(os.getpid()) - before - frozen:
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        frozen |= new
    for pid in frozen:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    pending = set(frozen)
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
    if pending:
        log.warning("processes of the failed Ray start still alive after %.0f s: %s",
                    wait_s, sorted(pending))
    return sorted(frozen)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):  # gone, or the pid is now someone else's
        pass
