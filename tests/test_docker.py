"""docker/: no engine here, so check what can be checked without one: the files parse, refer to
files that exist and are sent to the build, agree with each other and with the pinned stack,
hold no default secret, and the images' commands run locally with the same arguments (plus
--help); the S3 server's health check runs against a real `rclone serve s3`."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
SERVERS = ("postgres", "s3", "mlflow", "prefect")
WORKERS = ("worker-gpu", "worker-cpu")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _dockerfiles() -> list[Path]:
    return sorted(DOCKER.glob("*Dockerfile"))


def _ignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
        or fnmatch.fnmatch(Path(prefix).name, pattern.removeprefix("**/"))
        for pattern in patterns
        for prefix in prefixes
    )


def test_builds_use_files_that_exist_and_reach_the_build(services):
    assert set(SERVERS + WORKERS) == set(services)
    for name, service in services.items():
        assert "image" in service, name  # built images are tagged too
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            assert context == ROOT and (context / service["build"]["dockerfile"]).is_file()
    for dockerfile in _dockerfiles():
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src} is missing"
                    assert not _ignored(src), f"{dockerfile.name}: COPY {src} is in .dockerignore"
    for secret_or_bulk in (".git", ".venv", "docker/.env", "data", "runs", ".dvc/cache"):
        assert _ignored(secret_or_bulk), secret_or_bulk


def test_every_image_is_pinned_to_the_versions_the_clients_use(services):
    for name, service in services.items():
        image, _, tag = service["image"].partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: {image}"
    for dockerfile in _dockerfiles():
        (base,) = re.findall(r"^FROM (\S+)", dockerfile.read_text(), re.M)
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), f"{dockerfile.name}: {base}"
    assert services["prefect"]["image"] == f"prefecthq/prefect:{version('prefect')}-python3.11"
    assert services["mlflow"]["image"].endswith(f":{version('mlflow')}")
    assert f'"mlflow=={version("mlflow")}"' in (DOCKER / "mlflow.Dockerfile").read_text()
    for worker in WORKERS:  # the worker images' tags name the project's version
        assert services[worker]["image"].startswith(f"segops-worker:{version('segops')}-")
    pins = (DOCKER / "Dockerfile").read_text()
    assert f"torch=={version('torch').split('+')[0]}" in pins
    assert f"torchvision=={version('torchvision').split('+')[0]}" in pins


def test_every_pip_install_is_constrained_by_the_lock(services):
    constraints = (ROOT / "constraints.txt").read_text().lower()
    for dockerfile in _dockerfiles():
        text = dockerfile.read_text().replace("\\\n", " ")
        installs = re.findall(r"pip install ([^&\n]+)", text)
        assert installs, dockerfile.name
        for args in installs:
            assert re.search(r"-c \S*constraints\.txt", args), f"{dockerfile.name}: {args}"
    mlflow_image = (DOCKER / "mlflow.Dockerfile").read_text()
    for package in ("mlflow", "psycopg2-binary", "boto3"):
        assert package in mlflow_image and f"\n{package}==" in constraints, package


def test_services_point_at_each_other(services):
    env = services["worker-cpu"]["environment"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["PREFECT_API_URL"] == "http://prefect:4200/api"
    assert env["AWS_ENDPOINT_URL"] == "http://s3:9000"
    assert "--port=5000" in services["mlflow"]["command"]
    assert "--artifacts-destination=s3://mlflow/" in services["mlflow"]["command"]
    assert services["prefect"]["command"][-2:] == ["--port", "4200"]
    # SQLAlchemy 2.1: a bare postgresql:// means psycopg 3, which neither image has.
    mlflow_db = services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert mlflow_db.startswith("postgresql+psycopg2://") and mlflow_db.endswith(":5432/mlflow")
    prefect_db = services["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://") and prefect_db.endswith("/prefect")
    created = (DOCKER / "postgres-init.sql").read_text()
    assert "CREATE DATABASE mlflow" in created and "CREATE DATABASE prefect" in created
    assert "mkdir -p /data/mlflow /data/dvc" in services["s3"]["command"][0]  # the buckets
    for service in services.values():  # nothing published beyond this host
        assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", []))


def test_health_checks_gate_start_up_and_services_restart(services):
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        assert service["restart"] == "unless-stopped", name
        for needed, condition in service.get("depends_on", {}).items():
            assert needed in services and condition == {"condition": "service_healthy"}, name
    assert set(services["worker-cpu"]["depends_on"]) == {"prefect", "mlflow", "s3"}
    assert set(services["mlflow"]["depends_on"]) == {"postgres", "s3"}


def test_workers_gpu_and_cpu_profiles(services):
    gpu, cpu = services["worker-gpu"], services["worker-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert "cu1" in gpu["build"]["args"]["TORCH_INDEX"] and "args" not in cpu["build"]
    assert "deploy" not in cpu
    for worker in (gpu, cpu):
        assert worker["shm_size"] == "2gb"
        assert worker["command"] == _cmd("Dockerfile")


def test_secrets_have_no_defaults(compose):
    text = (DOCKER / "compose.yaml").read_text()
    used = re.findall(r"\$\{([^}]+)\}", text)
    assert used
    names = set()
    for expression in used:
        name, sep, message = expression.partition(":?")
        assert sep and "docker/.env" in message, f"${{{expression}}} may start without it"
        names.add(name)
    example = dict(
        line.split("=", 1)
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(example) == names and set(example.values()) == {""}  # no password shipped
    assert "docker/.env" in (ROOT / ".gitignore").read_text().split()


def test_every_named_volume_is_mounted(compose, services):
    mounted = {
        volume.split(":")[0]
        for service in services.values()
        for volume in service.get("volumes", [])
        if not volume.startswith((".", "/"))
    }
    assert mounted == set(compose["volumes"])
    assert "data:/app/data" in services["worker-cpu"]["volumes"]


def _cmd(dockerfile: str) -> list[str]:
    (line,) = [ln for ln in (DOCKER / dockerfile).read_text().splitlines() if ln.startswith("CMD")]
    return yaml.safe_load(line.removeprefix("CMD "))


def test_worker_serves_the_pool_segops_schedule_creates():
    from flows.deployments import DEFAULT_POOL

    command = _cmd("Dockerfile")
    assert command[command.index("--pool") + 1] == DEFAULT_POOL


def _s3_command(services) -> list[str]:
    line = services["s3"]["command"][0].split("exec ", 1)[1]
    return line.split()[:3]  # rclone serve s3 (the rest names the container's paths)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(lambda s: _cmd("Dockerfile"), id="worker"),
        pytest.param(lambda s: s["mlflow"]["command"], id="mlflow"),
        pytest.param(lambda s: s["prefect"]["command"], id="prefect"),
        pytest.param(_s3_command, id="s3"),
    ],
)
def test_entry_commands_run_here(services, command):
    argv = command(services)
    exe = BIN / argv[0]
    argv = [str(exe), *[a for a in argv[1:] if not a.startswith("--artifacts-destination")]]
    proc = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_s3_health_check_passes_against_a_real_server(services, tmp_path):
    from servers import free_port, start, stop

    port = free_port()
    keys = {"S3_ACCESS_KEY": "key", "S3_SECRET_KEY": "secret-key"}
    (tmp_path / "mlflow").mkdir()
    rclone = [str(BIN / "rclone"), "serve", "s3", str(tmp_path)]
    rclone += ["--addr", f"127.0.0.1:{port}", "--auth-key", "key,secret-key"]
    server = start(rclone, tmp_path / "rclone.log")
    _, script = services["s3"]["healthcheck"]["test"]
    script = script.replace("$$", "$").replace("127.0.0.1:9000", f"127.0.0.1:{port}")
    script = script.replace("rclone ", f"{BIN / 'rclone'} ", 1)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **keys}
    try:
        deadline, check = time.monotonic() + 20, ["sh", "-c", script]
        while (done := subprocess.run(check, env=env, capture_output=True)).returncode:
            assert time.monotonic() < deadline, done.stderr.decode()[-2000:]
            time.sleep(0.3)
        assert b"mlflow" in done.stdout  # a bucket is a folder
        wrong = {**env, "S3_SECRET_KEY": "wrong"}
        assert subprocess.run(check, env=wrong, capture_output=True).returncode
    finally:
        stop(server)
