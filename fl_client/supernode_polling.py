"""Flower's SuperNode with a shorter pull interval while a run is talking to it.

Flower 1.42's SuperNode (`flwr.supernode.start_client_internal`) pulls the SuperLink
for a message and, when there is none, sleeps a hard-coded 3 s; once it has handed a
message to the ClientApp it waits for the reply in 0.5 s steps. A round is a few
exchanges in a row (check-in, training, evaluation; five more with secure aggregation),
so a device answers each one up to 3.5 s late, and a round waits for its slowest
device: several seconds of every deployed round are these sleeps.

`python -m fl_client.supernode_polling ARGS` runs Flower's own `flower-supernode ARGS`
with one change, in the module's clock only: for `ACTIVE_FOR_S` after the last message
the idle pull waits `ACTIVE_PULL_S` instead of 3 s (an idle device goes back to
Flower's 3 s, so a quiet fleet does not load the SuperLink), and the reply wait polls
the SuperNode's own state (local, no network) every `REPLY_POLL_S`. Nothing else of the
SuperNode changes. The proper fix is in Flower: an option for the pull interval (or a
long-polling `PullMessages`) in `start_client_internal`, and a reply wait on an event
instead of a sleep; until then, this is the smallest change that gets there. If the
installed Flower lacks what this patches, the SuperNode runs unchanged and says so.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from fl_client.adaptive_clock import AdaptiveClock
from privacy.wire.object_pulls import shorten_object_pull_backoff

#: Flower's idle pull sleep and reply poll in `start_client_internal` (1.42).
FLOWER_IDLE_PULL_S = 3
FLOWER_REPLY_POLL_S = 0.5
#: The pull interval while a run is active, and how long "active" lasts after a message.
ACTIVE_PULL_S = 0.25
ACTIVE_FOR_S = 60.0
REPLY_POLL_S = 0.05


def supernode_clock() -> AdaptiveClock:
    """The SuperNode loop's clock: idle pull 3 s -> 0.25 s while active, reply poll 0.05 s."""
    return AdaptiveClock(FLOWER_IDLE_PULL_S, ACTIVE_PULL_S, ACTIVE_FOR_S,
                         {FLOWER_REPLY_POLL_S: REPLY_POLL_S})


def install(module: Any, clock: AdaptiveClock) -> bool:
    """Put `clock` into Flower's SuperNode loop module, active after every pulled message;
    False (the module unchanged) if it does not have the names this patches."""
    pull = getattr(module, "_pull_and_store_message", None)
    if getattr(module, "time", None) is not time or pull is None:
        return False

    def pull_and_note(*args: Any, **kwargs: Any) -> int | None:
        run_id = pull(*args, **kwargs)
        if run_id is not None:  # a message came: the run is talking to this node
            clock.note()
        return run_id

    module.time = clock
    module._pull_and_store_message = pull_and_note  # noqa: SLF001
    return True


def main() -> None:
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli.flower_supernode import flower_supernode

    if not install(start_client_internal, supernode_clock()):
        logging.getLogger(__name__).warning(
            "this Flower's SuperNode loop is not the one fl_client.supernode_polling knows: "
            "running it with its own poll intervals")
    shorten_object_pull_backoff()
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
