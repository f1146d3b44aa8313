"""A stand-in for the `time` module inside a Flower polling loop: fast while active.

Flower's device-side loops poll on fixed sleeps (the SuperNode pulls the SuperLink every
3 s when it got nothing, its SuperExec asks for a task every 1 s, the SuperNode checks for
a ClientApp's reply every 0.5 s). Each fixed sleep is a delay added to every exchange of a
round. `AdaptiveClock` replaces one loop's `time` module: while the loop has seen activity
in the last `active_for_s` (a message pulled, a task launched), its idle sleep of
`idle_s` becomes `active_s`; a loop that stays quiet goes back to Flower's interval, so an
idle fleet does not load the SuperLink. Sleeps listed in `shortened` are always replaced
(local polls that cost no network). Any other sleep, and every other attribute, is the
real `time` module's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any


class AdaptiveClock:
    """Shortens a Flower loop's fixed idle sleep for a while after each activity."""

    def __init__(self, idle_s: float, active_s: float, active_for_s: float,
                 shortened: Mapping[float, float] | None = None, *,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.idle_s, self.active_s, self.active_for_s = idle_s, active_s, active_for_s
        self.shortened = dict(shortened or {})
        self._monotonic, self._sleep = monotonic, sleep
        self.last_activity = -math.inf

    def note(self) -> None:
        """Something happened (a message, a task): poll fast for `active_for_s`."""
        self.last_activity = self._monotonic()

    def interval(self, seconds: float) -> float:
        if seconds == self.idle_s:
            active = self._monotonic() - self.last_activity < self.active_for_s
            return self.active_s if active else seconds
        return self.shortened.get(seconds, seconds)

    def sleep(self, seconds: float) -> None:
        self._sleep(self.interval(seconds))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)
