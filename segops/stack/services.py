"""The services of the local stack, in start order: how each starts and how it is probed."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from segops.stack import postgres
from segops.stack.procs import StackError, http_ok, port_open, read_pid, spawn, wait_until
from segops.stack.settings import Settings

BUCKETS = ("mlflow", "dvc")


@dataclass(frozen=True)
class Service:
    name: str
    port: int | None  # None: a worker (no port of its own)
    url: str  # what `status` shows
    start: Callable[[], int | None]  # returns the PID to watch while it starts
    ready: Callable[[], bool]
    timeout: float = 120.0


def _bin(name: str) -> str:
    """A program installed beside this Python (the virtualenv's bin/)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise StackError(f"{path} not found: install segops with its team extra (make setup)")
    return str(path)


def service_env(s: Settings) -> dict[str, str]:
    """The environment every service and worker runs with: the stack's URLs and keys."""
    return dict(
        os.environ,
        **s.exports(),
        PREFECT_HOME=str(s.root / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        RCLONE_CONFIG=str(s.root / "rclone.conf"),
        DVC_NO_ANALYTICS="1",
        PYTHONUNBUFFERED="1",
    )


def services(s: Settings) -> list[Service]:
    """Every service of the stack `s` describes, in start order (stop in reverse)."""
    root, env = s.root, service_env(s)
    pg_data = root / "postgres"

    def start_pg() -> None:
        postgres.start(pg_data, s.pg_port, root / "logs" / "postgres.log")
        postgres.ensure_databases(s.pg_port, ["mlflow", "prefect"])

    def start_s3() -> int:
        for bucket in BUCKETS:  # a bucket of `rclone serve s3` is a folder
            (root / "s3" / bucket).mkdir(parents=True, exist_ok=True)
        (root / "rclone.conf").touch()
        cmd = [_bin("rclone"), "serve", "s3", "--addr", f"127.0.0.1:{s.s3_port}"]
        cmd += ["--auth-key", f"{s.key},{s.secret}", str(root / "s3")]
        return spawn("s3", cmd, env, root, root)

    def start_mlflow() -> int:
        backend = postgres.url(s.pg_port, "mlflow", "psycopg2")
        cmd = [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(s.mlflow_port)]
        cmd += ["--backend-store-uri", backend, "--artifacts-destination", "s3://mlflow"]
        cmd += ["--workers", "2"]
        return spawn("mlflow", cmd, env, root, root)

    def start_prefect() -> int:
        db = postgres.url(s.pg_port, "prefect", "asyncpg")
        penv = env | {"PREFECT_API_DATABASE_CONNECTION_URL": db}
        cmd = [_bin("prefect"), "server", "start", "--host", "127.0.0.1"]
        cmd += ["--port", str(s.prefect_port)]
        return spawn("prefect", cmd, penv, root, root)

    found = [
        Service(
            "postgres",
            s.pg_port,
            f"127.0.0.1:{s.pg_port}",
            start_pg,
            lambda: postgres.is_ready(pg_data, s.pg_port),
            90.0,
        ),
        Service("s3", s.s3_port, s.s3_url, start_s3, lambda: http_ok(s.s3_url), 30.0),
        Service(
            "mlflow",
            s.mlflow_port,
            s.mlflow_url,
            start_mlflow,
            lambda: http_ok(s.mlflow_url + "/health"),
            180.0,
        ),
        Service(
            "prefect",
            s.prefect_port,
            s.prefect_api,
            start_prefect,
            lambda: http_ok(s.prefect_api + "/health"),
            180.0,
        ),
    ]
    for i in range(1, s.workers + 1):
        found.append(_worker(s, env, i))
    return found


def _worker(s: Settings, env: dict[str, str], i: int) -> Service:
    name = f"worker-{i}"

    def start() -> int:
        ensure_pool(s)
        cmd = [_bin("prefect"), "worker", "start", "--pool", s.pool, "--type", "process"]
        cmd += ["--name", f"{s.pool}-{name}"]
        return spawn(name, cmd, env, s.project, s.root)

    alive = lambda: read_pid(s.root / "pids" / f"{name}.pid") is not None  # noqa: E731
    return Service(name, None, f"pool {s.pool}", start, alive, 30.0)


def ensure_pool(s: Settings) -> None:
    """Create the `process` work pool through the REST API (409: it exists already)."""
    body = json.dumps({"name": s.pool, "type": "process"}).encode()
    req = urllib.request.Request(
        s.prefect_api + "/work_pools/", body, {"Content-Type": "application/json"}
    )
    try:
        urllib.request.urlopen(req, timeout=10).close()
    except urllib.error.HTTPError as exc:
        if exc.code != 409:
            raise StackError(f"creating work pool {s.pool} failed: HTTP {exc.code}") from exc


def start_one(svc: Service, s: Settings) -> str:
    """Start `svc` unless it is ready; returns "running" or "started"."""
    if svc.ready():
        return "running"
    log = s.root / "logs" / f"{svc.name}.log"
    ours = read_pid(s.root / "pids" / f"{svc.name}.pid")
    if ours is not None:  # started earlier, slow to answer (a busy machine): wait for it
        wait_until(svc.name, svc.ready, ours, log, svc.timeout)
        return "running"
    if svc.port is not None and port_open(svc.port):
        raise StackError(
            f"port {svc.port} for {svc.name} is taken by another program; pick another "
            f"(segops stack up --{svc.name}-port N, or SEGOPS_STACK_{svc.name.upper()}_PORT)"
        )
    pid = svc.start()
    wait_until(svc.name, svc.ready, pid, log, svc.timeout)
    return "started"
