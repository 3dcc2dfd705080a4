"""Serving limits that stop the work, not only the response.

- A time budget per request (`SEGOPS_SERVE_MAX_SECONDS`, default 50 s: under the scoring
  server's 60 s timeout; `segops serve` sets 90% of its --timeout). It counts from the moment
  the model takes the request (after the cheap header checks, its wait for a slot included);
  the model checks it before every row and, through forward pre-hooks on all of its modules,
  between every layer and sliding-window batch. Past it the prediction stops with
  `DEADLINE_EXCEEDED` (HTTP 504) and a message naming the budget, instead of running on
  after the server has given up.
- At most `SEGOPS_SERVE_MAX_CONCURRENT` predictions at once per served process (default 2).
  A request beyond them waits up to `SEGOPS_SERVE_QUEUE_SECONDS` (default 10 s, and never past
  its time budget), then is refused with `TEMPORARILY_UNAVAILABLE` (HTTP 503).

Each is read at model load from its environment variable, else from the model config
(`SERVING_MODEL_CONFIG='{"max_seconds": ..., "max_concurrent": ..., "queue_seconds": ...}'`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED, TEMPORARILY_UNAVAILABLE
from torch import nn

MAX_SECONDS_ENV = "SEGOPS_SERVE_MAX_SECONDS"
MAX_CONCURRENT_ENV = "SEGOPS_SERVE_MAX_CONCURRENT"
QUEUE_SECONDS_ENV = "SEGOPS_SERVE_QUEUE_SECONDS"
DEFAULTS = {"max_seconds": 50.0, "max_concurrent": 2, "queue_seconds": 10.0}
ENVS = {
    "max_seconds": MAX_SECONDS_ENV,
    "max_concurrent": MAX_CONCURRENT_ENV,
    "queue_seconds": QUEUE_SECONDS_ENV,
}

# (started, deadline, budget) of the request this thread is predicting; None outside one.
_CLOCK: ContextVar[tuple[float, float, float] | None] = ContextVar("segops_deadline", default=None)


def _setting(key: str, model_config: dict[str, Any] | None, kind: type) -> Any:
    env = ENVS[key]
    raw = os.environ.get(env) or (model_config or {}).get(key)
    if raw is None:
        return DEFAULTS[key]
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        value = 0
    if isinstance(raw, bool) or not value > 0:
        raise ValueError(f"{env} / {key} = {raw!r}: give a positive {kind.__name__}")
    return value


@dataclass(frozen=True)
class Limits:
    max_seconds: float
    max_concurrent: int
    queue_seconds: float

    @classmethod
    def read(cls, model_config: dict[str, Any] | None = None) -> Limits:
        """The limits from the environment, else `model_config`, else DEFAULTS; ValueError
        for a value that is not a positive number."""
        return cls(
            _setting("max_seconds", model_config, float),
            _setting("max_concurrent", model_config, int),
            _setting("queue_seconds", model_config, float),
        )


def over_time(budget: float, elapsed: float) -> MlflowException:
    return MlflowException(
        f"prediction stopped after {elapsed:.1f} s: over the time budget of {budget:g} s per "
        f"request ({MAX_SECONDS_ENV}); send fewer or smaller images, or raise {MAX_SECONDS_ENV} "
        f"(keep it under the server's --timeout)",
        error_code=DEADLINE_EXCEEDED,
    )


def check_deadline() -> None:
    """Raise `over_time` if the current request is past its budget; no-op outside requests."""
    clock = _CLOCK.get()
    if clock is not None:
        now = time.monotonic()
        if now > clock[1]:
            raise over_time(clock[2], now - clock[0])


def watch(model: nn.Module) -> None:
    """Check the deadline before every module's forward: a long prediction (many windows, a
    big image) stops within one layer of its budget running out."""
    for module in model.modules():
        module.register_forward_pre_hook(lambda _module, _args: check_deadline())


class Gate:
    """Admits at most `limits.max_concurrent` predictions at once, each with its deadline."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_concurrent)

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Wait (bounded) for a slot, then run the block under the request's time budget."""
        limits = self.limits
        started = time.monotonic()
        deadline = started + limits.max_seconds
        wait = max(0.0, min(limits.queue_seconds, deadline - started))
        if not self._slots.acquire(timeout=wait):
            raise MlflowException(
                f"busy: {limits.max_concurrent} predictions already running and none finished "
                f"within {wait:g} s ({MAX_CONCURRENT_ENV}, {QUEUE_SECONDS_ENV}); retry later",
                error_code=TEMPORARILY_UNAVAILABLE,
            )
        token = _CLOCK.set((started, deadline, limits.max_seconds))
        try:
            check_deadline()
            yield
        finally:
            _CLOCK.reset(token)
            self._slots.release()
