"""What the engine process prints besides the run's own lines: Flower's log and Ray's.

* Flower's console log handler colours its level names whatever the stream is, and Ray
  colours the prefixes of its workers' lines: both are turned plain when stderr is not a
  terminal or `NO_COLOR` is set (:mod:`fl_server.terminal`).
* `flwr.simulation.run_simulation` logs a deprecation warning on every run. It speaks to
  whoever calls that function (fedmsr, not its users; docs/running.md says why fedmsr
  still does), so exactly that record is dropped, and nothing else Flower logs.
"""

from __future__ import annotations

import logging
import os
import sys

from fl_server.terminal import colour_allowed

#: The start of the argument of Flower's "DEPRECATED FEATURE: %s" record for run_simulation.
RUN_SIMULATION_DEPRECATION = "The `run_simulation` function is deprecated"


class DropRunSimulationDeprecation(logging.Filter):
    """Drops Flower's run_simulation deprecation record; passes every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (str(record.msg).startswith("DEPRECATED FEATURE:") and bool(args)
                    and str(args[0]).startswith(RUN_SIMULATION_DEPRECATION))


def configure_engine_output() -> None:
    """In the engine process, before Flower's simulation runtime starts."""
    from flwr.common.logger import FLOWER_LOGGER, update_console_handler

    colour = colour_allowed(sys.stderr)
    update_console_handler(colored=colour)
    if not colour:  # read by Ray's driver when it prints a worker's line
        os.environ["RAY_COLOR_PREFIX"] = "0"
    if not any(isinstance(f, DropRunSimulationDeprecation) for f in FLOWER_LOGGER.filters):
        FLOWER_LOGGER.addFilter(DropRunSimulationDeprecation())
