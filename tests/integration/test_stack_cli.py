"""`segops stack` without starting servers: the exports, `status` of a stopped stack, the
refusal of a port another program holds, and workers restarted with the Prefect server."""

from __future__ import annotations

import contextlib
import json
import os
import socket

from servers import free_port

from segops.stack import start_all
from segops.stack.procs import read_pid, spawn, stop
from segops.stack.services import Service
from segops.stack.settings import load_settings
from tests.integration import team


def test_env_prints_the_exports_and_keeps_the_settings(tmp_path):
    first = team.stack_cli(tmp_path, "env")
    exports = team.parse_exports(first.stdout)
    assert exports["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:54350"
    assert exports["PREFECT_API_URL"] == "http://127.0.0.1:54342/api"
    assert exports["AWS_ENDPOINT_URL"] == exports["MLFLOW_S3_ENDPOINT_URL"]
    assert exports["SEGOPS_DVC_REMOTE_URL"] == "s3://dvc/segops"
    assert not (tmp_path / ".stack" / "stack.json").exists()  # env writes nothing


def test_status_of_a_stopped_stack_exits_1_naming_each_service(tmp_path):
    status = team.stack_cli(tmp_path, "status")
    assert status.returncode == 1
    rows = [line.split() for line in status.stdout.splitlines()]
    assert [r[0] for r in rows] == ["postgres", "s3", "mlflow", "prefect", "worker-1", "worker-2"]
    assert all(r[1] == "down" for r in rows)


def test_a_taken_port_is_refused_naming_it_and_the_setting(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up = team.stack_cli(tmp_path, "up", "--postgres-port", str(port), timeout=60)
    assert up.returncode == 2, up.stderr
    assert f"port {port} for postgres is taken by another program" in up.stderr
    assert "--postgres-port" in up.stderr and "SEGOPS_STACK_POSTGRES_PORT" in up.stderr
    saved = json.loads((tmp_path / ".stack" / "stack.json").read_text())
    assert saved["pg_port"] == port and len(saved["secret"]) == 32
    assert (tmp_path / ".stack" / "stack.json").stat().st_mode & 0o077 == 0  # holds the secret


def test_up_restarts_the_workers_when_it_restarts_the_prefect_server(tmp_path):
    """Stand-ins (`sleep`) for the server and a worker: a worker that outlived its server is
    restarted when `up` starts the server again, left alone when the server was running."""
    settings = load_settings(tmp_path / ".stack")
    root = settings.root

    def fake(name: str, port: int | None) -> Service:
        start = lambda: spawn(name, ["sleep", "60"], {}, tmp_path, root)  # noqa: E731
        ready = lambda: read_pid(root / "pids" / f"{name}.pid") is not None  # noqa: E731
        return Service(name, port, name, start, ready, 10.0)

    svcs = [fake("prefect", free_port()), fake("worker-1", None)]
    old = spawn("worker-1", ["sleep", "60"], {}, tmp_path, root)  # polled the dead server
    try:
        done = start_all(svcs, settings, on_progress=lambda _: None)
        assert done == [("prefect", "started"), ("worker-1", "restarted")]
        new = read_pid(root / "pids" / "worker-1.pid")
        assert new not in (None, old) and gone(old)
        again = start_all(svcs, settings, on_progress=lambda _: None)
        assert again == [("prefect", "running"), ("worker-1", "running")]
        assert read_pid(root / "pids" / "worker-1.pid") == new
    finally:
        stop(["prefect", "worker-1"], root)


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (reaped first when it is our child)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except OSError:
        return True
    return False
