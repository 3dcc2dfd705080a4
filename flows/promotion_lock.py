"""Where a flow's decide-and-move serialises.

With a Prefect server (PREFECT_API_URL set), every host that runs the flow talks to the same
server, so a global concurrency limit per registered model (`promote-<name>`, one slot) holds
promotions of that model one after the other across hosts. Without one (the ephemeral
in-process API), the flow keeps the file lock of `segops.promotion.registry`, which only
serialises processes that share a disk. `segops` never imports Prefect: the choice is made here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL

# lazy imports: segops.promotion.registry (MLflow) loads when a file lock is taken: the retrain
# flow imports this module when `segops run` starts (docs/development.md "Imports").

# Renewed in the background while held; long enough for a champion's re-evaluation to finish
# between renewals, short enough that a dead holder's slot comes back within minutes.
LEASE_SECONDS = 300.0


def server_url() -> str | None:
    """The Prefect server this process talks to; None on the ephemeral in-process API."""

    return PREFECT_API_URL.value() or None


def limit_name(model_name: str) -> str:
    """The global concurrency limit that serialises promotions of `model_name`."""
    return f"promote-{model_name}"


def ensure_limit(name: str) -> None:
    """Create global concurrency limit `name` with one slot when missing (Prefect 3.8 skips a
    limit that does not exist, with only a warning: that would be no lock at all); set it back
    to one active slot when someone changed it."""

    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            # ObjectAlreadyExists: created meanwhile by another host's flow.
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
            return
        if found.limit != 1 or not found.active:
            print(f"concurrency limit {name} had limit {found.limit}; set back to 1 (active)")
            client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=1, active=True)
            )


@contextmanager
def global_promotion_lock(model_name: str) -> Iterator[str]:
    """Hold the one slot of `promote-<model_name>` on the Prefect server; yields its name."""

    name = limit_name(model_name)
    ensure_limit(name)
    # strict: a limit deleted between ensure_limit and here fails instead of running unlocked.
    with concurrency(name, occupy=1, lease_duration=LEASE_SECONDS, strict=True):
        yield name


def promotion_lock_for(
    model_name: str, lock_dir: str | Path, on_wait: Callable[[], None] | None = None
) -> AbstractContextManager:
    """The lock a promotion or rollback of `model_name` takes outside a flow (`segops promote`):
    the global limit with a Prefect server, else the file lock in `lock_dir`."""
    from segops.promotion.registry import promotion_lock

    if server_url() is None:
        return promotion_lock(lock_dir, on_wait)
    return global_promotion_lock(model_name)
