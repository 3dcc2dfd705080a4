"""The local production stack, without Docker: PostgreSQL, an S3 server (rclone), an MLflow
server (PostgreSQL + proxied S3 artifacts), a Prefect server (PostgreSQL), a `process` work
pool and its workers, all on 127.0.0.1 under one folder (`.stack/`). Servers run as
subprocesses (this package imports neither prefect nor mlflow); PIDs in pids/, logs in logs/.
"""

from __future__ import annotations

from pathlib import Path

from segops.stack import postgres
from segops.stack.procs import StackError, stop
from segops.stack.services import Service, services, start_one
from segops.stack.settings import Settings, load_settings, save_settings

__all__ = ["Settings", "StackError", "down", "export_lines", "load_settings", "status", "up"]


def up(settings: Settings, on_progress=print) -> list[tuple[str, str]]:
    """Start every service not yet running and wait for each to be healthy (idempotent).
    Returns (service, "started" | "running" | "restarted") in start order.

    When the Prefect server had to be (re)started, running workers are restarted too: a
    Prefect 3.8 worker that outlived its server keeps polling but can no longer cancel flow
    runs ("Cancellation polling task failed", docs/development.md)."""
    save_settings(settings)
    return start_all(services(settings), settings, on_progress)


def start_all(svcs: list[Service], settings: Settings, on_progress=print) -> list[tuple[str, str]]:
    """`up` for the services `svcs` (in start order; workers are those without a port)."""
    done: list[tuple[str, str]] = []
    server_started = False
    for svc in svcs:
        on_progress(f"{svc.name}: checking ({svc.url}) ...")
        again = server_started and svc.port is None and svc.ready()
        if again:  # a worker of the server that just came back
            on_progress(f"{svc.name}: restarting (the Prefect server was restarted) ...")
            stop([svc.name], settings.root)
        state = start_one(svc, settings)
        server_started |= svc.name == "prefect" and state == "started"
        done.append((svc.name, "restarted" if again else state))
    return done


def status(settings: Settings) -> list[tuple[str, str, bool]]:
    """(service, where, healthy) for each service."""
    return [(svc.name, svc.url, svc.ready()) for svc in services(settings)]


def down(settings: Settings) -> list[str]:
    """Stop every service (the others together, then PostgreSQL); returns those that were
    running."""
    names = [svc.name for svc in reversed(services(settings)) if svc.name != "postgres"]
    stopped = stop(names, settings.root)
    if postgres.stop(settings.root / "postgres"):
        stopped.append("postgres")
    return stopped


def export_lines(settings: Settings) -> list[str]:
    """`export NAME=value` lines for a shell."""
    return [f"export {k}={v}" for k, v in settings.exports().items()]


def default_root(project: str | Path = ".") -> Path:
    return Path(project).resolve() / ".stack"
