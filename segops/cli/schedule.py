"""`segops schedule`: deploy the `retrain` flow to Prefect on a cron schedule.

Prefect is imported only inside the command, through `flows.deployments` (the `segops` package
itself never imports it), so `segops --help` stays fast.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

import typer

from segops.cli.common import DatasetOpt, ParamsOpt, SetOpt, config
from segops.errors import ConfigError

# lazy imports: Prefect (through flows.deployments) and rich load when the command runs:
# `segops --help` imports this module (docs/development.md "Imports").


def _job_variables(pairs: list[str] | None, image: str | None) -> dict[str, Any]:
    """`--env KEY=VALUE` and `--image` as job variables of this deployment (nothing else:
    the stores' URLs belong to the work pool, not to the shell that deploys)."""

    env: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--env {pair!r}: expected KEY=VALUE, e.g. --env SEGOPS_X=1")
        env[key.strip()] = value
    variables: dict[str, Any] = {"env": env} if env else {}
    if image:
        variables["image"] = image
    return variables


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
    pool: Annotated[str, typer.Option(help="work pool (created when missing)")] = "segops-process",
    pool_type: Annotated[
        str, typer.Option(help="type of a pool created here: process, docker or kubernetes")
    ] = "process",
    repo: Annotated[
        str | None,
        typer.Option(help="git URL the workers clone (default: this checkout's origin)"),
    ] = None,
    commit: Annotated[
        str | None, typer.Option(help="commit the workers run (default: HEAD)")
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="worker image for docker/kubernetes pools (job variable)")
    ] = None,
    timezone: Annotated[str, typer.Option(help="IANA timezone of the cron string")] = "UTC",
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    dataset: DatasetOpt = None,
    workspace: Annotated[
        Path | None, typer.Option(help="DVC workspace (default: the repository root)")
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", help="KEY=VALUE for the flow runs of this deployment (repeatable)"),
    ] = None,
    flow: Annotated[
        str, typer.Option(help="retrain, or score (needs --src and --out)")
    ] = "retrain",
    src: Annotated[
        str | None, typer.Option(help="score: folder of images to score, relative to the clone")
    ] = None,
    out: Annotated[
        str | None, typer.Option(help="score: folder the masks and summary go to")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="score: models:/ URI (default: the champion)")
    ] = None,
    engine: Annotated[str, typer.Option(help="score: local or ray")] = "local",
) -> None:
    """Deploy the `retrain` flow (or, with --flow score, the `score` flow) to Prefect on a cron
    schedule.

    Workers clone the repository at the commit deployed and run there: give paths inside this
    checkout (they are recorded relative to its root). The stores' URLs (MLFLOW_TRACKING_URI,
    AWS_*) come from the work pool or the worker's environment, not from this shell."""

    from segops.cli.progress import console

    source_mod = importlib.import_module("flows.code_source")
    deployments = importlib.import_module("flows.deployments")
    # Fail fast on a bad config or path here rather than in the worker at 3 a.m.
    if flow not in ("retrain", "score"):
        raise typer.BadParameter(f"--flow {flow!r}: give retrain or score")
    if flow == "score" and not (src and out):
        raise typer.BadParameter("--flow score needs --src and --out")
    deployments.check_cron(cron, timezone)
    config(params, overrides, dataset.resolve() if dataset else None)
    root = source_mod.checkout_root(Path.cwd())
    source = source_mod.code_source(root, repo, commit)
    params_rel = None  # no params file: the defaults
    if params.exists():
        params_rel = source_mod.relative_to_checkout(params, root, "params file")
        source_mod.check_committed(root, source.commit, params_rel, "params file")
    if flow == "score":
        if name == "retrain-scheduled":
            name = deployments.SCORE_NAME
        deployment_id = deployments.deploy_score(
            cron,
            repository=source.repository,
            commit=source.commit,
            src=src,
            out=out,
            model=model,
            engine=engine,
            name=name,
            pool=pool,
            pool_type=pool_type,
            params=params_rel,
            overrides=list(overrides or []),
            job_variables=_job_variables(env, image),
            timezone=timezone,
        )
    else:
        deployment_id = deployments.deploy_retrain(
            cron,
            repository=source.repository,
            commit=source.commit,
            name=name,
            pool=pool,
            pool_type=pool_type,
            params=params_rel,
            overrides=list(overrides or []),
            dataset=source_mod.relative_to_checkout(dataset, root, "dataset") if dataset else None,
            workspace=source_mod.relative_to_checkout(workspace or root, root, "workspace"),
            job_variables=_job_variables(env, image),
            timezone=timezone,
        )
    console.print(
        f"deployment {flow}/{name} ({deployment_id}): cron '{cron}' ({timezone}) "
        f"on work pool {pool}, code {source.repository} @ {source.commit[:12]}\n"
        f"start a worker:  prefect worker start --pool {pool}\n"
        f"run it now:      prefect deployment run '{flow}/{name}'",
        highlight=False,
    )
    print(deployment_id)  # stdout: just the id, for scripts
