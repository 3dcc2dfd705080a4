"""Deployments of the `retrain` and `score` flows that run on any worker.

A deployment records no path of the machine that made it: its pull step clones the repository
at one commit (`flows.code_source`), the params file, dataset and workspace are relative to that
clone, and the stores' URLs come from the work pool (its job variables, or the worker's own
environment for a process pool), never from the shell that deployed. Work pools of type
`process` (a worker on a host with the project's dependencies) and `docker` / `kubernetes`
(the segops worker image, docker/Dockerfile) are supported. Needs a Prefect server:

    export PREFECT_API_URL=http://127.0.0.1:4200/api
    segops schedule --cron "0 3 * * *" --repo https://git.example.com/segops.git
    prefect worker start --pool segops-process

From Python (e.g. a test): `deploy_retrain(None, repository=URL, commit=SHA, pool=...)`;
`deploy_score(cron, src=..., out=..., ...)` scores an input folder nightly with the champion.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
from prefect.client.schemas.schedules import CronSchedule
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect.utilities.callables import parameter_schema
from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type
from pydantic import ValidationError

from flows.code_source import CodeSource
from segops.errors import SegopsError

# lazy imports: the flow module deployed (flows.retrain or flows.score, with the steps it wires)
# is imported only when that flow is deployed (docs/development.md "Imports").

ENTRYPOINT = "flows/retrain.py:retrain"
DEFAULT_POOL = "segops-process"
DEFAULT_NAME = "retrain-scheduled"
FLOW_NAME = "retrain"
SCORE_ENTRYPOINT = "flows/score.py:score"
SCORE_NAME = "score-nightly"
ENGINES = ("local", "ray")
POOL_TYPES = ("process", "docker", "kubernetes")  # docker and kubernetes: the worker image


class ScheduleError(SegopsError):
    """A schedule cannot be created: bad cron or timezone, no Prefect server, or a failed deploy."""


def check_cron(cron: str, timezone: str = "UTC") -> dict[str, str]:
    """Validate a cron string and timezone the way the Prefect server will; returns
    `{"cron": ..., "timezone": ...}`. Contacts no server, so bad input fails before anything
    is created."""

    def problems(exc: ValidationError) -> str:
        return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())

    try:
        CronSchedule(cron=cron)
    except ValidationError as exc:
        raise ScheduleError(
            f"invalid cron {cron!r}: {problems(exc)}. Expected five fields "
            "'minute hour day-of-month month day-of-week', e.g. '0 3 * * *' (03:00 every day)."
        ) from None
    try:
        schedule = CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        raise ScheduleError(f"invalid timezone {timezone!r}: {problems(exc)}") from None
    return {"cron": schedule.cron, "timezone": str(schedule.timezone)}


def api_url() -> str:
    """The Prefect API this process talks to; raises ScheduleError when none is set or it does
    not answer (a deployment needs a real server, not the ephemeral in-process API)."""

    url = PREFECT_API_URL.value()
    if not url:
        raise ScheduleError(
            "PREFECT_API_URL is not set: a scheduled deployment needs a running Prefect server. "
            "Start one with `prefect server start` (or `make prefect-ui`) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    with get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if failure is not None:
        raise ScheduleError(
            f"the Prefect server at PREFECT_API_URL={url} does not answer ({failure}). "
            "Start it with `prefect server start` (or `make prefect-ui`)."
        )
    return str(url)


def ensure_pool(pool: str, pool_type: str = "process") -> str:
    """Create work pool `pool` of `pool_type` with Prefect's default job template when it is
    missing; returns the type of the pool the server holds. Configure the stores' URLs and the
    image on the pool (`prefect work-pool update`, or its job variables in the UI)."""

    if pool_type not in POOL_TYPES:
        raise ScheduleError(f"work pool type {pool_type!r}: use one of {', '.join(POOL_TYPES)}")
    with get_client(sync_client=True) as client:
        try:
            return client.read_work_pool(pool).type
        except ObjectNotFound:
            pass
        # A type whose worker is not installed here (docker, kubernetes): the server answers
        # from Prefect's worker metadata (the copy bundled with it when offline).
        default = get_default_base_job_template_for_infrastructure_type(pool_type)
        template = run_coro_as_sync(default)
        try:
            created = client.create_work_pool(
                WorkPoolCreate(name=pool, type=pool_type, base_job_template=template or {})
            )
        except ObjectAlreadyExists:  # created meanwhile by another deploy
            return client.read_work_pool(pool).type
        return created.type


def _relative(value: str | None, what: str) -> str | None:
    """Refuse a path of the deploying machine: the worker resolves paths in its clone."""
    if value is None or "://" in value:
        return value
    if PurePosixPath(value).is_absolute() or value.startswith("~") or ".." in value.split("/"):
        raise ScheduleError(
            f"{what} {value!r} is a path of this machine: give it relative to the repository "
            "root (the flow run starts in a fresh clone on the worker)"
        )
    return value


def deploy_retrain(
    cron: str | None,
    *,
    repository: str,
    commit: str,
    name: str = DEFAULT_NAME,
    pool: str = DEFAULT_POOL,
    pool_type: str = "process",
    params: str | None = "params.yaml",
    overrides: list[str] | None = None,
    dataset: str | None = None,
    workspace: str = ".",
    job_variables: dict[str, Any] | None = None,
    timezone: str = "UTC",
) -> str:
    """Create (or update, same `name`) deployment `retrain/<name>`; returns its id.

    Each flow run clones `repository` at `commit` (a full SHA) and starts in the clone;
    `params`, `dataset` and `workspace` are relative to it (or URLs). `cron` None: no schedule
    (runs are triggered by hand or through the API). `job_variables` override the pool's for
    this deployment only (e.g. `{"image": "segops:1.2"}`); nothing is taken from this shell.
    """
    schedule = check_cron(cron, timezone) if cron is not None else None  # before any I/O
    if not pool.strip() or not name.strip():
        raise ScheduleError("the deployment name and the work pool name must not be empty")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ScheduleError(f"commit {commit!r}: give the full 40-character SHA to clone")
    parameters = {
        "params": _relative(params, "params file"),
        "overrides": list(overrides or []),
        "dataset": _relative(dataset, "dataset"),
        "workspace": _relative(workspace, "workspace"),
    }
    api_url()
    found_type = ensure_pool(pool, pool_type)
    if found_type not in POOL_TYPES:
        raise ScheduleError(
            f"work pool {pool!r} has type {found_type!r}; use a {', '.join(POOL_TYPES)} pool"
        )
    return _create(CodeSource(repository, commit), name, pool, parameters, job_variables, schedule)


def deploy_score(
    cron: str | None,
    *,
    repository: str,
    commit: str,
    src: str,
    out: str,
    model: str | None = None,
    engine: str = "local",
    address: str | None = None,
    name: str = SCORE_NAME,
    pool: str = DEFAULT_POOL,
    pool_type: str = "process",
    params: str | None = "params.yaml",
    overrides: list[str] | None = None,
    job_variables: dict[str, Any] | None = None,
    timezone: str = "UTC",
) -> str:
    """Create (or update) deployment `score/<name>`: each run pins `model` (default: the
    champion of `promotion.model_name`) to its version and scores `src` into `out` (paths
    relative to the clone, or URLs/mounted paths the worker sees) with `engine`. Same code
    source, pools and refusals as `deploy_retrain`; e.g. nightly two hours after retrain."""
    schedule = check_cron(cron, timezone) if cron is not None else None
    if engine not in ENGINES:
        raise ScheduleError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ScheduleError(f"commit {commit!r}: give the full 40-character SHA to clone")
    if not src.strip() or not out.strip():
        raise ScheduleError("the score deployment needs the input (src) and output (out) folders")
    parameters = {
        "src": _relative(src, "input folder"),
        "out": _relative(out, "output folder"),
        "model": model,
        "engine": engine,
        "address": address,
        "params": _relative(params, "params file"),
        "overrides": list(overrides or []),
    }
    api_url()
    found_type = ensure_pool(pool, pool_type)
    if found_type not in POOL_TYPES:
        raise ScheduleError(
            f"work pool {pool!r} has type {found_type!r}; use a {', '.join(POOL_TYPES)} pool"
        )
    return _create(
        CodeSource(repository, commit), name, pool, parameters, job_variables, schedule, "score"
    )


def _create(
    source: CodeSource,
    name: str,
    pool: str,
    parameters: dict[str, Any],
    job_variables: dict[str, Any] | None,
    schedule: dict[str, str] | None,
    flow_name: str = FLOW_NAME,
) -> str:
    if flow_name == "score":
        from flows.score import score as flow_fn

        entrypoint, what = SCORE_ENTRYPOINT, "Score the champion"
    else:
        from flows.retrain import retrain as flow_fn

        entrypoint, what = ENTRYPOINT, "Retrain"
    schedules = (
        [DeploymentScheduleCreate(schedule=CronSchedule(**schedule), active=True)]
        if schedule
        else []
    )
    when = f"cron {schedule['cron']} ({schedule['timezone']})" if schedule else "on demand"
    try:
        # The client rather than flow.from_source(...).deploy(): from_source clones the
        # repository here first, and `.deploy()` / `prefect deploy` print hints that fail on
        # Prefect 3.8.8. The server upserts by flow and name: a second deploy replaces this one.
        with get_client(sync_client=True) as client:
            deployment_id = client.create_deployment(
                flow_id=client.create_flow_from_name(flow_name),
                name=name,
                version=source.commit[:12],
                entrypoint=entrypoint,
                work_pool_name=pool,
                pull_steps=source.pull_steps(),
                parameters=parameters,
                parameter_openapi_schema=parameter_schema(flow_fn).model_dump(exclude_unset=True),
                job_variables=dict(job_variables or {}),
                schedules=schedules,
                description=f"{what} {when} from {source.repository}@{source.commit[:12]}.",
                tags=["segops", "scheduled" if schedule else "on-demand"],
                path=None,
            )
    except (ValueError, PrefectHTTPStatusError) as exc:
        raise ScheduleError(f"could not deploy {flow_name}/{name}: {exc}") from exc
    return str(deployment_id)
