"""Prefect's side of `segops run`'s start-up: the temporary local API, started by the command
itself (not by the flow's first API call) so that the run's imports can overlap with it.

With no PREFECT_API_URL, Prefect starts its temporary API (`prefect server` in a process of its
own) on the first client call and waits for it, 5-10 s on a 2-core machine. `temporary_api`
hands that start to `segops.cli.lifecycle.freeze_heap`, which calls it while another thread
imports what the flow's tasks import anyway (torch, MLflow, Great Expectations). The flow's
client then finds the same server running (`SubprocessASGIServer` is one instance per port).
"""

from __future__ import annotations

from collections.abc import Callable

from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

# lazy imports: prefect.server.api.server (1-2 s) only when this run starts the temporary API;
# the workers drained at the end, loaded by then


def temporary_api() -> Callable[[], None] | None:
    """The start of Prefect's temporary API when this run needs one (no PREFECT_API_URL),
    with its module imported now, before any other thread imports; None with a server."""
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    return SubprocessASGIServer().start


def drain() -> None:
    """Deliver the run's pending logs and events while the API still answers.

    `segops run` ends with `os._exit` after the exit handlers (`segops.cli.lifecycle.leave`);
    Prefect drains its log and event workers from threading's exit hooks, which the interpreter
    runs before the exit handlers but `os._exit` skips. Left to the exit handlers, the
    temporary API was stopped first and the workers retried against it for ~5 s."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    EventsWorker.drain_all(timeout=5)
