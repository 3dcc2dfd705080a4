"""Quiet, offline-safe, patient defaults for the tools segops drives, set in the code path
(not only in the Makefile), so `segops run` and a deployed flow print figures, not telemetry
errors or download progress bars. A value the user has set always wins (`setdefault`)."""

from __future__ import annotations

import os

QUIET_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # the local API's heartbeat ("database is locked")
    # The ephemeral API gets 20 s to start by default; a busy 2-core machine took longer (a
    # fresh PREFECT_HOME migrates its database first) and the whole run failed.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow 3 tries to send usage events: errors offline
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # one bar per download floods flow logs
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
}


EPHEMERAL_ONLY = ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",)


def quiet_defaults() -> None:
    """Set each of `QUIET_DEFAULTS` that the environment does not set already (the ephemeral
    API's settings only when no running server is named by PREFECT_API_URL).

    A blank PREFECT_API_URL in the environment (`export PREFECT_API_URL=`) is removed (a blank
    line in a `.env` file, which Prefect reads itself, is not seen here):
    Prefect then starts its temporary API, but its events worker reads the blank URL, stops,
    and logs an ERROR with a traceback for every task state (66 in one `segops run`)."""
    if not os.environ.get("PREFECT_API_URL", "x").strip():
        del os.environ["PREFECT_API_URL"]
    server = "PREFECT_API_URL" in os.environ
    for key, value in QUIET_DEFAULTS.items():
        if not (server and key in EPHEMERAL_ONLY):
            os.environ.setdefault(key, value)
