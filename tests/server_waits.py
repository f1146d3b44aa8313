"""In a test's engine process, the server waits for its simulated devices' replies.

The ServerApp gives the fleet a fixed time to connect and to answer a check-in, an
evaluation or an upload request (`fl_server.checkin`, `fl_server.federated_evaluation`,
`fl_server.collection`): right for real devices, which may be gone. In a simulation every
device is live, and whether it answers within those seconds depends only on how fast the
machine is: the first check-in waits for Ray to start and for every actor to import the
ClientApp, and nine devices queue on two actors. A device left out by such a deadline
changes the round, and the test fails on a loaded machine although nothing is wrong.

A test engine (`tests.hostile_engine`, `tests.faulty_devices`) calls
:func:`wait_for_every_reply` before the run starts. The server then waits for the replies
themselves, the event the test is about, and the test's own subprocess timeout bounds a
device that never answers. The train deadline is untouched: it is the run's own setting
(`RunConfig.round_timeout_s`), and a test that wants a late device dropped sets it there.
"""

from __future__ import annotations

import importlib

#: Longer than any test's own timeout: the test gives up first, never the server.
PATIENT_S = 3600.0
#: Module -> its fixed waits, module globals that are read each time a wait starts.
FIXED_WAITS = {
    "fl_server.checkin": ("NODE_WAIT_S", "QUERY_TIMEOUT_S"),
    "fl_server.federated_evaluation": ("QUERY_TIMEOUT_S",),
    "fl_server.collection": ("UPLOAD_TIMEOUT_S",),
}


def wait_for_every_reply() -> None:
    """Lengthen every fixed wait of the server in this process to :data:`PATIENT_S`.

    A wait that moved or was renamed raises here: silently keeping the short one would
    bring the flake back unnoticed.
    """
    for module_name, names in FIXED_WAITS.items():
        module = importlib.import_module(module_name)
        for name in names:
            if not isinstance(getattr(module, name, None), float):
                raise TypeError(f"{module_name}.{name} is not a float wait any more: "
                                "update tests/server_waits.py")
            setattr(module, name, PATIENT_S)
