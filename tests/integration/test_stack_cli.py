"""`segops stack` without starting servers: the exports, `status` of a stopped stack, and
the refusal of a port another program holds."""

from __future__ import annotations

import json
import socket

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
