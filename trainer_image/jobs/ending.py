"""How a job ended, as the process exit code reports it (the codes: ``cli/base.py``)."""

from __future__ import annotations

from enum import Enum


class Ending(Enum):
    FINISHED = "finished"  # the run or job is complete (or --max-assignments was reached)
    STOPPED = "stopped"  # SIGTERM: stopped at a step, nothing reported; run again to resume
    DIVERGED = "diverged"  # an epoch job's loss went non-finite
    FAILING = "failing"  # a worker failed its last N assignments in a row: it is broken
