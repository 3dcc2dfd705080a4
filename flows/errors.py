"""How the flows treat a `SegopsError`, a problem the user fixes (its message says how): it is
not retried, and Prefect logs it as its message, without a traceback. Any other exception
keeps Prefect's retries and its traceback in the log.

A SegopsError raised while handling a dropped connection or a timeout (a push to a remote
that is down: botocore's, requests', urllib3's, httpx's, aiohttp's or DVC's transfer errors,
found down the exception's chain), or one marked `transient` (a crashed torchrun group), is
retried like any other failure. Nothing here imports Prefect: the retry
condition receives Prefect's objects, the filter sits on the standard `logging` loggers.
"""

from __future__ import annotations

import logging
from typing import Any

from segops.errors import SegopsError

# Prefect's loggers for task and flow runs: "Task run failed with exception: ...",
# "Encountered exception during execution: ..." (each logged with its traceback).
RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


# A failure in any of these classes (or their subclasses) means a service was unreachable or
# slow: the libraries raise their own classes, not Python's ConnectionError/TimeoutError
# (botocore's EndpointConnectionError is an Exception, DVC's UploadError a DvcException).
# Matched by module and class name along each class's MRO, so nothing is imported here.
TRANSIENT_CLASSES = frozenset(
    {
        ("builtins", "ConnectionError"),
        ("builtins", "TimeoutError"),
        ("botocore.exceptions", "ConnectionError"),  # EndpointConnectionError, read timeouts
        ("botocore.exceptions", "HTTPClientError"),
        ("requests.exceptions", "ConnectionError"),  # MLflow over HTTP
        ("requests.exceptions", "Timeout"),
        ("urllib3.exceptions", "HTTPError"),  # MaxRetryError, NewConnectionError, ...
        ("httpx", "TransportError"),  # Prefect's client
        ("aiohttp.client_exceptions", "ClientConnectionError"),  # s3fs
        ("dvc.exceptions", "FileTransferError"),  # UploadError, DownloadError
    }
)


def _transient_class(exc: BaseException) -> bool:
    return any((c.__module__, c.__qualname__) in TRANSIENT_CLASSES for c in type(exc).__mro__)


def is_transient(exc: BaseException) -> bool:
    """Whether running again may succeed: anything but a user's error, unless that error says
    it is (`transient = True`, e.g. a crashed torchrun group) or was raised while handling a
    dropped connection or a timeout, anywhere down its chain (`__cause__`, or the
    `__context__` that `raise ... from None` only hides from the printout)."""
    if not isinstance(exc, SegopsError):
        return True
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if getattr(link, "transient", False) or _transient_class(link):
            return True
        link = link.__cause__ or link.__context__
    return False


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
