"""`segops schedule`: deploy the `retrain` flow to Prefect on a cron schedule.

Prefect is imported only inside the command, through `flows.deployments` (the `segops` package
itself never imports it), so `segops --help` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from segops.cli.common import DatasetOpt, ParamsOpt, SetOpt, config

# Forwarded to the flow-run process when set here, so scheduled runs use the stores you use.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "DVC_NO_ANALYTICS")


def _parse_env(pairs: list[str] | None) -> dict[str, str]:
    from segops.errors import ConfigError

    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--env {pair!r}: expected KEY=VALUE, e.g. --env MLFLOW_TRACKING_URI=..."
            )
        env[key.strip()] = value
    return env


def schedule(
    cron: Annotated[
        str,
        typer.Option(
            "--cron",
            help="cron string 'minute hour day-of-month month day-of-week', e.g. '0 3 * * *'",
        ),
    ],
    name: Annotated[
        str, typer.Option(help="deployment name: runs appear as retrain/<name>")
    ] = "retrain-scheduled",
    pool: Annotated[
        str, typer.Option(help="process work pool (created when missing)")
    ] = "segops-process",
    timezone: Annotated[str, typer.Option(help="IANA timezone of the cron string")] = "UTC",
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    dataset: DatasetOpt = None,
    workspace: Annotated[Path, typer.Option(help="DVC workspace (repository root)")] = Path("."),
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            help="KEY=VALUE for the flow-run process (repeatable); "
            f"{', '.join(FORWARDED_ENV)} are forwarded when set",
        ),
    ] = None,
) -> None:
    """Deploy the `retrain` flow to Prefect on a cron schedule.

    Needs a running Prefect server (`make prefect-ui`) and PREFECT_API_URL; a process worker
    (`prefect worker start --pool segops-process`) then runs it in this project."""
    import importlib

    from segops.cli.progress import console

    # Fail fast on a bad config here rather than in the worker at 3 a.m.; paths are made
    # absolute because the worker runs from the project root, not from this directory.
    config(params, overrides, dataset.resolve() if dataset else None)
    params_path = str(params.resolve()) if params.exists() else None

    deployments = importlib.import_module("flows.deployments")
    deployment_id = deployments.deploy_retrain(
        cron=cron,
        name=name,
        pool=pool,
        params=params_path,
        overrides=list(overrides or []),
        dataset=str(dataset.resolve()) if dataset else None,
        workspace=str(workspace.resolve()),
        env=_parse_env(env),
        timezone=timezone,
    )
    console.print(
        f"deployment retrain/{name} ({deployment_id}): cron '{cron}' ({timezone}) "
        f"on work pool {pool}\n"
        f"start a worker:  prefect worker start --pool {pool}\n"
        f"run it now:      prefect deployment run 'retrain/{name}'",
        highlight=False,
    )
    print(deployment_id)  # stdout: just the id, for scripts
