"""A real `prefect server start` on loopback for the tests that need one (SQLite in its own
PREFECT_HOME, a free port, stopped by its process group). Not a fixture: each module wraps
`running_server` in a module-scoped fixture of its own. Ports, start, wait and stop come from
tests/servers.py (re-exported here for the modules that import them from this one)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from servers import BIN, free_port, running, stop

__all__ = ["BIN", "free_port", "prefect_env", "running_server", "server_command", "stop"]


def prefect_env(api_url: str, home: Path) -> dict[str, str]:
    """Environment for a child process talking to `api_url` with a state directory of its own
    (conftest.py sets PREFECT_API_URL="", the ephemeral API, for the test process)."""
    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "DVC_NO_ANALYTICS": "1",
    }


def server_command(port: int) -> list[str]:
    return [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]


@contextmanager
def running_server(home: Path, timeout: float = 90) -> Iterator[str]:
    """A `prefect server start` process on a free loopback port; yields its API URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = prefect_env("", home)
    with running(server_command(port), f"{url}/health", home / "server.log", env, timeout=timeout):
        yield url
