"""A device's SuperExec that starts each ClientApp from a warm process: fork, not exec.

Flower 1.42 runs every message a SuperNode receives in a fresh `flwr-clientapp` process
(SuperNode -> `flower-superexec` -> `flwr-clientapp --token T`): a cold interpreter that
imports Flower and then the app's libraries (torch, NumPy, `cryptography`) before it
answers, and builds its first optimiser (which imports torch's compiler stack): about
3.5 s of CPU per training message on a small core, paid on every message. No isolation mode keeps a ClientApp process
alive between messages: `--isolation process` only stops the SuperNode from starting
its SuperExec, and whoever runs one still gets one process per message.

This module is that SuperExec, run with the SuperNode's `--isolation process`
(`fedmsr device start` starts both). It is Flower's own `run_superexec` loop (task
polling, the ClientApp plugin, the Runtime API) with one executor swapped in,
`ForkExecutor`: the third-party libraries are imported once, here, and each task runs
in a child forked from this process that calls Flower's own `run_clientapp` with the
task's token. What the child does is exactly what `flwr-clientapp` does (pull the
message, install the FAB, load the ClientApp *from the FAB*, answer, push the reply,
exit), so the app's code still comes from the run's FAB: fedmsr's own modules are never
preloaded here. The child is a separate process like before: a crash or a hang in one
message cannot touch the next.

Fork safety: the parent never runs a torch operation (no OpenMP pool exists to be
copied), and each child reseeds NumPy's global generator from the OS, as a fresh
process would (Python's `random` reseeds itself on fork; torch's default generator is
never drawn from here, so each child starts from torch's own initial seed, as a fresh
process does). Finished children are reaped on every poll.

Run: `python -m fl_client.warm_clientapp --runtime-api-address 127.0.0.1:PORT
--parent-pid PID` (the SuperNode's Runtime API, insecure on loopback, as Flower's own
SuperExec connects in subprocess isolation).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from fl_client.adaptive_clock import AdaptiveClock
from privacy.wire.object_pulls import shorten_object_pull_backoff

#: Imported once in the executor; every forked ClientApp finds them loaded. Third-party
#: only (the app itself is loaded from the run's FAB in each child), and only libraries
#: whose import starts no thread of its own that a fork would lose, save OpenBLAS's
#: worker, which re-creates itself after a fork: OpenCV, Opacus and dp-accounting do
#: start one, and are left to the child (real footage and DP runs only). `torch._dynamo`
#: is what the first optimiser a process builds imports (1.4 s here).
WARM_MODULES = (
    "numpy", "torch", "torch.nn", "torch.nn.functional", "torch.optim", "torch._dynamo",
    "cryptography.hazmat.primitives.asymmetric.ec",
    "cryptography.hazmat.primitives.ciphers.aead",
    "flwr.clientapp", "flwr.supernode.runtime.run_clientapp",
)
#: The app's own packages (what the run's FAB holds): never preloaded here, and dropped
#: from a forked child's module table before it loads the ClientApp, so that each child
#: loads them from the FAB, as `flwr-clientapp` would, and not from this process.
APP_PACKAGES = ("fl_client", "fl_server", "privacy", "strategies", "monitoring")
#: How often the executor asks the SuperNode for a task: Flower's SuperExec default (1 s)
#: when idle, `TASK_POLL_S` for `ACTIVE_FOR_S` after it launched one (a round's next
#: message is seconds away; an idle device costs its SuperNode one request a second).
FLOWER_TASK_POLL_S = 1.0
TASK_POLL_S = 0.1
ACTIVE_FOR_S = 60.0


def preload(modules: tuple[str, ...] = WARM_MODULES) -> list[str]:
    """Import what the ClientApp will need; the names that are not installed (skipped)."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def forget_app_modules() -> None:
    """Drop the app's packages from `sys.modules` (in a forked child, before the app loads)."""
    for name in list(sys.modules):
        if name.split(".")[0] in APP_PACKAGES:
            del sys.modules[name]


def run_forked_clientapp(runtime_api_address: str, token: str, insecure: bool,
                         root_certificates: str | None, parent_pid: int | None,
                         runtime_dependency_install: bool) -> int:
    """In a forked child: Flower's `run_clientapp` for one token; its exit code."""
    import numpy as np
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    np.random.seed()  # noqa: NPY002 - a fresh process's global generator, not the parent's
    forget_app_modules()
    try:
        run_clientapp(
            runtime_api_address=runtime_api_address, token=token, insecure=insecure,
            certificates=validate_and_resolve_root_certificates(root_certificates, insecure),
            parent_pid=parent_pid, runtime_dependency_install=runtime_dependency_install)
    except SystemExit as done:  # flwr_exit ends every task with sys.exit
        return done.code if isinstance(done.code, int) else 1
    return 0


def _executor_class() -> type:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import LaunchResult
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
    from flwr.supercore.superexec.executor.types import ExecutionSpec

    class ForkExecutor(SubprocessExecutor):
        """Flower's subprocess executor, but a ClientApp task runs in a forked child."""

        def __init__(self, clock: AdaptiveClock) -> None:
            self.children: set[int] = set()
            self.clock = clock

        def launch(self, spec: ExecutionSpec) -> LaunchResult:
            if spec.task_type != TaskType.CLIENT_APP:
                return super().launch(spec)
            self.clock.note()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child: one message, then out, never back into the loop
                code = 1
                try:
                    code = run_forked_clientapp(
                        spec.runtime_api_address, spec.token, spec.insecure,
                        spec.root_certificates_path, spec.parent_pid,
                        spec.runtime_dependency_install)
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            self.children.add(pid)
            return LaunchResult.accepted()

        def reconcile(self) -> None:
            """Reap the children that have finished (no zombies)."""
            for pid in list(self.children):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    self.children.discard(pid)

    return ForkExecutor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fl_client.warm_clientapp",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    preload()
    shorten_object_pull_backoff()  # inherited by every forked ClientApp
    os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(FLOWER_TASK_POLL_S)
    from flwr.supercore.superexec import run_superexec as superexec

    clock = AdaptiveClock(FLOWER_TASK_POLL_S, TASK_POLL_S, ACTIVE_FOR_S)
    executor = _executor_class()(clock)
    # Flower's loop, with this executor in place of the one its factory would build, and
    # its poll sleep on the adaptive clock.
    superexec.get_executor = lambda *_args, **_kwargs: executor
    superexec.time = clock  # type: ignore[assignment]  # a stand-in for the module
    superexec.run_superexec(runtime_api_address=args.runtime_api_address, insecure=True,
                            parent_pid=args.parent_pid)


if __name__ == "__main__":
    main()
