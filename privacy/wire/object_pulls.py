"""How soon a Flower process asks again for a message's object that is not there yet.

Flower 1.42 moves a message in two steps: the message (its object tree), then each of its
objects (the model's arrays). A receiver that asks for an object the sender has not
finished uploading gets "unavailable" and, by default, waits 1 s, then 2 s, 4 s, up to
10 s (`flwr.supercore.constant.PULL_INITIAL_BACKOFF` / `PULL_BACKOFF_CAP`, bound as
keyword defaults of `flwr.supercore.inflatable.inflatable_utils.pull_objects` and
`pull_and_inflate_object_from_tree`). On one machine that race is the rule, not the
exception: a SuperNode registers the ClientApp's task before it has pulled the message's
objects from the SuperLink, so a ClientApp started at once asks too early, and so does a
SuperNode pulling a message the ServerApp is still uploading. Each such miss cost a round
1 to 3 s per exchange for objects that arrive milliseconds later.

`shorten_object_pull_backoff` makes the first retry come after `INITIAL_S` and caps the
back-off at `CAP_S`; the number of tries and the total time limit stay Flower's. Every
process that pulls objects calls it once at start: the device's SuperNode and warm
SuperExec (`fl_client.supernode_polling`, `fl_client.warm_clientapp`) and the ServerApp
(`fl_server.server_app`). The fix belongs in Flower (an option, or a receiver that waits
for the object instead of polling for it); this changes two defaults and nothing else.
"""

from __future__ import annotations

from typing import Any

INITIAL_S = 0.02
CAP_S = 0.5


def shorten_object_pull_backoff(initial_s: float = INITIAL_S, cap_s: float = CAP_S) -> bool:
    """Set Flower's object-pull back-off defaults; False (unchanged) if they are not there."""
    from flwr.supercore.inflatable import inflatable_utils

    functions: list[Any] = [inflatable_utils.pull_objects,
                            inflatable_utils.pull_and_inflate_object_from_tree]
    defaults = [getattr(f, "__kwdefaults__", None) or {} for f in functions]
    if not all({"initial_backoff", "backoff_cap"} <= set(d) for d in defaults):
        return False
    for d in defaults:
        d["initial_backoff"], d["backoff_cap"] = initial_s, cap_s
    return True
