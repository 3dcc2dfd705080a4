"""How the flows treat a `SegopsError`, a problem the user fixes (its message says how): it is
not retried, and Prefect logs it as its message, without a traceback. Any other exception
keeps Prefect's retries and its traceback in the log.

A SegopsError raised from a dropped connection or a timeout (a push to a remote that is down)
is transient: retried like any other failure. Nothing here imports Prefect: the retry
condition receives Prefect's objects, the filter sits on the standard `logging` loggers.
"""

from __future__ import annotations

import logging
from typing import Any

from segops.errors import SegopsError

# Prefect's loggers for task and flow runs: "Task run failed with exception: ...",
# "Encountered exception during execution: ..." (each logged with its traceback).
RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


def is_transient(exc: BaseException) -> bool:
    """Whether running again may succeed: anything but a user's error, unless that error was
    raised from a connection error or a timeout."""
    if not isinstance(exc, SegopsError):
        return True
    return isinstance(exc.__cause__, ConnectionError | TimeoutError)


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn` (task, task run, failed state): retry transient failures.
    A task that raised gives a state whose `data` is the exception."""
    exc = state.data
    return not isinstance(exc, BaseException) or is_transient(exc)


class UserErrorWithoutTraceback(logging.Filter):
    """Drops the traceback of a record whose exception is a SegopsError; keeps the record (its
    one-line message names the error) and every other traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], SegopsError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_user_errors() -> None:
    """Install the filter on Prefect's run loggers (once per process; a logging dictConfig
    keeps a logger's filters)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, UserErrorWithoutTraceback) for f in logger.filters):
            logger.addFilter(UserErrorWithoutTraceback())


# The task options of a task that retries transient failures only: `@task(retries=2, ...,
# **ONLY_TRANSIENT)`: a user's error would fail the same way each time.
ONLY_TRANSIENT: dict[str, Any] = {"retry_condition_fn": retry_unless_user_error}
