"""Scheduled retraining: a Prefect deployment of the `retrain` flow on a cron schedule.

The deployment runs on a *process* work pool: a worker started on this machine (or any machine
holding the project at the same path) runs each flow run as a subprocess, in the project root.
Needs a Prefect server; the deployment is declared in `prefect.yaml` (`prefect deploy --all`)
or created from Python / the CLI:

    prefect server start                        (or: make prefect-ui), then
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    segops schedule --cron "0 3 * * *"          (calls deploy_retrain)
    prefect worker start --pool segops-process
"""

from __future__ import annotations

from pathlib import Path

from segops.errors import SegopsError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/retrain.py:retrain"
DEFAULT_POOL = "segops-process"
DEFAULT_NAME = "retrain-scheduled"
FLOW_NAME = "retrain"


class ScheduleError(SegopsError):
    """A schedule cannot be created: bad cron or timezone, no Prefect server, or a failed deploy."""


def check_cron(cron: str, timezone: str = "UTC") -> dict[str, str]:
    """Validate a cron string and timezone the way the Prefect server will; returns
    `{"cron": ..., "timezone": ...}`. Contacts no server, so bad input fails before anything
    is created."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

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
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

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


def ensure_process_pool(pool: str) -> str:
    """Create work pool `pool` of type process when it is missing; returns its type."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            return client.read_work_pool(pool).type
        except ObjectNotFound:
            pass
        template = ProcessWorker.get_default_base_job_template()
        try:
            created = client.create_work_pool(
                WorkPoolCreate(name=pool, type="process", base_job_template=template)
            )
        except ObjectAlreadyExists:  # created meanwhile by another `segops schedule`
            return client.read_work_pool(pool).type
        return created.type


def deploy_retrain(
    cron: str,
    name: str = DEFAULT_NAME,
    pool: str = DEFAULT_POOL,
    params: str | None = "params.yaml",
    overrides: list[str] | None = None,
    dataset: str | None = None,
    workspace: str = ".",
    env: dict[str, str] | None = None,
    timezone: str = "UTC",
) -> str:
    """Create (or update, same `name`) deployment `retrain/<name>` on a cron schedule; returns
    the deployment id.

    The flow's code is taken from this project's directory, which is where the worker runs it,
    so relative `params`, `dataset` and `workspace` paths are relative to the project root.
    `env` goes to the flow-run process (e.g. MLFLOW_TRACKING_URI, so the worker logs to the
    same store as you). The process work pool is created when missing.
    """
    schedule = check_cron(cron, timezone)  # before any network call: bad input creates nothing
    if not pool.strip() or not name.strip():
        raise ScheduleError("the deployment name and the work pool name must not be empty")
    api_url()
    pool_type = ensure_process_pool(pool)
    if pool_type != "process":
        # Without an image the code is only reachable on this filesystem: only process workers
        # (which run flows as local subprocesses) can execute it.
        raise ScheduleError(
            f"work pool {pool!r} has type {pool_type!r}; scheduled retraining needs a process "
            f"pool (runs from {PROJECT_ROOT}). Use --pool {DEFAULT_POOL} or another process pool."
        )

    from prefect import flow
    from prefect.client.schemas.schedules import CronSchedule

    parameters = {
        "params": params,
        "overrides": list(overrides or []),
        "dataset": dataset,
        "workspace": workspace,
    }
    job_variables = {"env": dict(env)} if env else {}
    try:
        # from_source(<local dir>) records the directory as the deployment's pull step
        # (set_working_directory), so the worker imports flows/retrain.py from this checkout.
        # to_deployment + apply rather than .deploy(): same API calls, minus the image checks
        # and console tables that .deploy() prints for container pools.
        remote = flow.from_source(source=str(PROJECT_ROOT), entrypoint=ENTRYPOINT)
        deployment = remote.to_deployment(
            name=name,
            schedules=[CronSchedule(**schedule)],
            parameters=parameters,
            job_variables=job_variables,
            work_pool_name=pool,
            description=f"Retrain on cron {schedule['cron']} ({schedule['timezone']}).",
            tags=["segops", "scheduled"],
        )
        deployment_id = deployment.apply(work_pool_name=pool)
    except ValueError as exc:  # Prefect reports a bad pool, entrypoint or parameters this way
        raise ScheduleError(f"could not deploy {FLOW_NAME}/{name}: {exc}") from exc
    return str(deployment_id)
