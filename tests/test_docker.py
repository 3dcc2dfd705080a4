"""docker/: no engine here, so check what can be checked without one: the files parse, refer to
files that exist, agree with each other and with the pinned stack, and the images' commands run
locally with the same arguments (plus --help)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_builds_from_files_that_exist(compose):
    services = compose["services"]
    assert {"postgres", "minio", "mlflow", "prefect", "worker"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            assert context == ROOT and (context / service["build"]["dockerfile"]).is_file()
    for dockerfile in DOCKER.glob("*Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src} is missing"


def test_services_point_at_each_other(compose):
    services = compose["services"]
    env = services["worker"]["environment"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["PREFECT_API_URL"] == "http://prefect:4200/api"
    assert "--port=5000" in services["mlflow"]["command"]
    assert services["prefect"]["command"][-2:] == ["--port", "4200"]
    assert "postgres:5432/mlflow" in " ".join(services["mlflow"]["command"])
    db = services["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert db.endswith("postgres:5432/prefect")
    created = (DOCKER / "postgres-init.sql").read_text()
    assert "CREATE DATABASE mlflow" in created and "CREATE DATABASE prefect" in created
    for service in services.values():  # nothing published beyond this host
        assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", []))


def test_images_pin_the_versions_the_clients_use(compose):
    assert compose["services"]["prefect"]["image"].startswith(
        f"prefecthq/prefect:{version('prefect')}-"
    )
    assert f'"mlflow=={version("mlflow")}"' in (DOCKER / "mlflow.Dockerfile").read_text()
    pins = (DOCKER / "Dockerfile").read_text()
    assert f"torch=={version('torch').split('+')[0]}" in pins
    assert f"torchvision=={version('torchvision').split('+')[0]}" in pins


def _cmd(dockerfile: str) -> list[str]:
    (line,) = [ln for ln in (DOCKER / dockerfile).read_text().splitlines() if ln.startswith("CMD")]
    return yaml.safe_load(line.removeprefix("CMD "))


def test_worker_serves_the_pool_segops_schedule_creates(compose):
    from flows.deployments import DEFAULT_POOL

    command = compose["services"]["worker"]["command"]
    assert command == _cmd("Dockerfile")
    assert command[command.index("--pool") + 1] == DEFAULT_POOL


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(lambda c: _cmd("Dockerfile"), id="worker"),
        pytest.param(lambda c: c["services"]["mlflow"]["command"], id="mlflow"),
        pytest.param(lambda c: c["services"]["prefect"]["command"], id="prefect"),
    ],
)
def test_entry_commands_run_here(compose, command):
    argv = command(compose)
    exe = BIN / argv[0]
    argv = [
        str(exe),
        *[a for a in argv[1:] if not re.match(r"--(backend-store-uri|artifacts-destination)", a)],
    ]
    proc = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
