"""Shared fixtures: tiny datasets the tests make themselves, and an isolated environment."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Keep every tool's state out of the user's home and off the network (set before imports).
_STATE = Path(tempfile.mkdtemp(prefix="segops-tests-"))
os.environ.update(
    {
        "PREFECT_HOME": str(_STATE / "prefect"),
        "PREFECT_API_URL": "",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "MLFLOW_TRACKING_URI": f"sqlite:///{_STATE}/mlflow.db",
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "TORCH_HOME": str(_STATE / "torch"),
    }
)

from segops.config import Config, load_config  # noqa: E402
from segops.data.shapes import generate_shapes  # noqa: E402

# Test modules that share package-scoped fixtures: the team stack (tests/integration/
# conftest.py) starts once for them, so pytest-xdist must give them to one worker.
TEAM_STACK_MODULES = {
    f"tests/integration/{name}.py"
    for name in ("test_team_stack", "test_team_stack_faults", "test_team_promotion")
}


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown without it
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs pytest-xdist with `--dist loadfile` (a module's fixtures and order stay
    in one worker), except that the team-stack modules are one unit: one stack, not one per
    worker. (`--dist loadgroup` with `xdist_group` marks would say it, but pytest-xdist 3.8
    groups by renaming `item._nodeid`, which pytest 9.2 no longer reads.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class TeamStackTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return "team-stack" if module in TEAM_STACK_MODULES else module

    return TeamStackTogether(config, log)


@pytest.fixture(scope="session", autouse=True)
def no_stray_mlruns():
    """A test logging into MLflow's default experiment writes ./mlruns into the checkout (its
    artifact location is the working folder): fail the session when that happens."""
    stray = Path(__file__).resolve().parents[1] / "mlruns"
    existed = stray.exists()
    yield
    assert existed or not stray.exists(), (
        f"{stray} was written by a test: give its runs an experiment with an artifact location "
        "under tmp_path (see tests/promotion/test_compat.py)"
    )


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """A 40-sample, 32x32 `shapes` dataset (read-only: copy it before changing it)."""
    return generate_shapes(tmp_path_factory.mktemp("shapes"), n=40, size=32, seed=3)


def tiny_overrides(root: Path, out: Path) -> list[str]:
    """`--set` values that train a small U-Net on `root` in a few seconds."""
    return [
        f"data.root={root}",
        "data.image_size=32",
        "data.val_fraction=0.25",
        "model.options={width: 4, depth: 2}",
        "train.epochs=2",
        "train.batch_size=8",
        "train.warmup_epochs=0.5",
        # One thread, not `auto`: two runs compared bit for bit must sum in the same order,
        # and under `make test`'s two workers `auto` gives 1 or 2 threads with the load.
        "train.threads=1",
        f"train.out_dir={out}",
        "evaluate.worst_k=3",
    ]


def tiny_config(root: Path, out: Path, *extra: str) -> Config:
    """A config that trains a small U-Net on `root` in a few seconds."""
    return load_config(None, [*tiny_overrides(root, out), *extra])


def write_sample(root: Path, sid: str, image: np.ndarray, mask: np.ndarray | None) -> None:
    """Write images/<sid>.png and (unless None) masks/<sid>.png under `root`."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{sid}.png")
    if mask is not None:
        Image.fromarray(mask).save(root / "masks" / f"{sid}.png")


def scoring_images(folder: Path, n: int, odd_every: int) -> Path:
    """`n` random RGB images of 32x32 (every `odd_every`-th of another size) and one corrupt
    `broken.png` in `folder`: an archive to score."""
    rng = np.random.default_rng(0)
    for i in range(n):
        size = (32, 32) if i % odd_every else (24 + i % 7, 40)
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"img{i:03d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


@pytest.fixture
def folder_dataset(tmp_path) -> Path:
    """A valid 8-sample folder dataset with classes bg/a/b (16x12 images), no split files."""
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for i in range(8):
        mask = np.zeros((12, 16), np.uint8)
        mask[2:6, 3:9] = 1
        mask[7:11, 9:15] = 2 if i % 2 else 1
        write_sample(root, f"s{i}", rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), mask)
    (root / "classes.txt").write_text("bg\na\nb\n")
    return root


def dvc_workspace(tmp_path: Path, commit: bool = False) -> Path:
    """`tmp_path/ws`: a git repository (with one commit when `commit`, so lineage can name
    it) that is a DVC workspace whose remote "local" is the folder `tmp_path/remote`."""
    from segops.versioning import configure_remote, ensure_workspace

    ws = tmp_path / "ws"
    ws.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    ensure_workspace(ws)
    configure_remote(ws, "local", str(tmp_path / "remote"))
    if commit:
        (ws / "README").write_text("test workspace\n")
        subprocess.run(["git", "add", "-A"], cwd=ws, check=True)
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
            cwd=ws,
            check=True,
        )
    return ws


@pytest.fixture
def workspace(tmp_path, monkeypatch, own_mlflow):
    """A git + DVC workspace with a local remote, a tiny shapes dataset and its own MLflow
    (flow tests; modules that need another workspace define their own)."""
    ws = dvc_workspace(tmp_path)
    generate_shapes(ws / "data" / "shapes", n=60, size=32, seed=4)
    monkeypatch.chdir(ws)
    return ws


@pytest.fixture(scope="module")
def harness():
    """Prefect's test harness (a temporary local API) for one test module."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def own_mlflow(tmp_path, monkeypatch) -> str:
    """A fresh sqlite MLflow store for one test (env and MLflow's process-wide cache)."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # MLflow caches the URI of earlier tests process-wide
    yield uri
    mlflow.set_tracking_uri(None)  # also unsets the env var: monkeypatch restores it after


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real `prefect server` on loopback (SQLite) shared by the modules that need a server
    (the promotion lock, deployments): started once, stopped by PID at the end."""
    from prefect_server import running_server

    with running_server(tmp_path_factory.mktemp("prefect-server")) as url:
        yield url


S3_KEY, S3_SECRET = "segops-test", "s3cret-for-tests"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3 server (`rclone serve s3` on loopback) with a bucket `scoring`, its endpoint
    and keys in this process's environment for the module (set before Ray starts: local Ray
    workers inherit it). Yields the buckets' folder on disk."""
    from servers import BIN, free_port, running

    root = tmp_path_factory.mktemp("s3")
    (root / "buckets" / "scoring").mkdir(parents=True)
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [str(BIN / "rclone"), "serve", "s3", "--addr", url.removeprefix("http://")]
    cmd += ["--auth-key", f"{S3_KEY},{S3_SECRET}", str(root / "buckets")]
    env = dict(os.environ, RCLONE_CONFIG=str(root / "rclone.conf"))
    patch = pytest.MonkeyPatch()
    try:
        with running(cmd, url, root / "rclone.log", env, timeout=30):
            for name, value in {
                "AWS_ENDPOINT_URL": url,
                "AWS_ACCESS_KEY_ID": S3_KEY,
                "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                "AWS_DEFAULT_REGION": "us-east-1",
            }.items():
                patch.setenv(name, value)
            yield root / "buckets"
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def fs(s3):
    """An s3fs filesystem on the `s3` server (no listing cache)."""
    from segops.data.fetch import s3_filesystem

    return s3_filesystem("s3://scoring")
