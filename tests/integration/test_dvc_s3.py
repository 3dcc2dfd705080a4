"""The DVC remote on a real S3 server (`rclone serve s3` on loopback): the URL from
SEGOPS_DVC_REMOTE_URL goes to `.dvc/config.local`, credentials only in the environment; the
preflight names an unreachable endpoint or a missing bucket in seconds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from servers import BIN, free_port, running

from segops.config import load_config
from segops.data.shapes import generate_shapes
from segops.preflight import StoreUnreachable, check_stores
from segops.versioning import remote_has, version_dataset
from tests.conftest import dvc_workspace

pytestmark = pytest.mark.slow
KEY, SECRET = "segops-test", "s3cret-for-tests"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 server with one bucket `dvc`; yields its endpoint URL."""
    root = tmp_path_factory.mktemp("s3")
    (root / "buckets" / "dvc").mkdir(parents=True)
    port = free_port()
    cmd = [str(BIN / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{port}"]
    cmd += ["--auth-key", f"{KEY},{SECRET}", str(root / "buckets")]
    env = dict(os.environ, RCLONE_CONFIG=str(root / "rclone.conf"))
    url = f"http://127.0.0.1:{port}"
    with running(cmd, url, root / "rclone.log", env, timeout=30):
        yield url, root / "buckets"


@pytest.fixture
def s3_env(s3, monkeypatch):
    url, _ = s3
    for name, value in {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "SEGOPS_DVC_REMOTE_URL": "s3://dvc/team",
    }.items():
        monkeypatch.setenv(name, value)
    return s3


def test_push_to_s3_from_env_keeps_the_checkout_clean(s3_env, tmp_path):
    _, buckets = s3_env
    ws = dvc_workspace(tmp_path)
    tracked = (ws / ".dvc" / "config").read_bytes()
    generate_shapes(ws / "data" / "shapes", n=6, size=16, seed=0)
    version = version_dataset(ws, load_config().versioning)
    files = [p for p in (ws / "data").rglob("*") if p.is_file()]
    assert version.remote_url == "s3://dvc/team" and version.pushed == len(files) + 1  # + .dir
    assert (ws / ".dvc" / "config").read_bytes() == tracked  # the tracked config is untouched
    local = (ws / ".dvc" / "config.local").read_text()
    assert "s3://dvc/team" in local and SECRET not in local and KEY not in local
    on_s3 = [p for p in (buckets / "dvc" / "team").rglob("*") if p.is_file()]
    assert len(on_s3) == version.pushed
    assert remote_has((ws / "data.dvc").read_text(), "s3://dvc/team")  # read back without ws
    lines = check_stores(load_config(), ws)
    assert "dvc remote 'local' s3://dvc/team: ok" in lines


def test_preflight_names_a_missing_bucket_and_an_unreachable_endpoint(
    s3_env, tmp_path, monkeypatch
):
    ws = dvc_workspace(tmp_path)
    monkeypatch.setenv("SEGOPS_DVC_REMOTE_URL", "s3://nobucket/x")
    started = time.monotonic()
    with pytest.raises(StoreUnreachable, match=r"bucket nobucket does not exist"):
        check_stores(load_config(), ws)
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("SEGOPS_DVC_REMOTE_URL", "s3://dvc/team")
    with pytest.raises(
        StoreUnreachable,
        match=r"dvc remote 'local' s3://dvc/team: S3 endpoint http://127.0.0.1:\d+ unreachable",
    ):
        check_stores(load_config(), ws)
    assert time.monotonic() - started < 20
    assert not (ws / ".dvc" / "config.local").exists()  # a check writes nothing


def _upload_nuclei(tmp: Path, prefix: str) -> Path:
    """A 2-class dataset uploaded through the S3 API to `s3://dvc/<prefix>` (not written into
    the server's folder: rclone caches its listings); returns the local original."""
    import s3fs

    from tests.test_own_data import nuclei

    source = nuclei(tmp / "upload" / Path(prefix).name, n=18)
    fs = s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}, skip_instance_cache=True
    )
    for path in source.rglob("*"):
        if path.is_file():
            fs.put_file(str(path), f"dvc/{prefix}/{path.relative_to(source).as_posix()}")
    return source


def test_an_s3_dataset_is_downloaded_whole_and_bad_urls_fail_in_seconds(
    s3_env, tmp_path, monkeypatch
):
    from segops.data.fetch import fetch_dataset
    from segops.data.place import dir_md5
    from segops.errors import DatasetError

    source = _upload_nuclei(tmp_path, "datasets/nuclei")
    got = fetch_dataset("s3://dvc/datasets/nuclei/", tmp_path / "staging")
    assert got == tmp_path / "staging" / "nuclei" and dir_md5(got) == dir_md5(source)
    assert [p.name for p in (tmp_path / "staging").iterdir()] == ["nuclei"]  # no temp left
    with pytest.raises(DatasetError, match=r"s3://dvc/datasets/none: no objects"):
        fetch_dataset("s3://dvc/datasets/none", tmp_path / "staging")
    started = time.monotonic()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(DatasetError, match=r"S3 endpoint http://127.0.0.1:\d+ unreachable"):
        fetch_dataset("s3://dvc/datasets/nuclei", tmp_path / "again")
    assert time.monotonic() - started < 15 and not (tmp_path / "again" / "nuclei").exists()


def test_the_flow_trains_on_an_s3_dataset_under_its_own_name(
    s3_env, harness, tmp_path, monkeypatch, own_mlflow
):
    from flows.retrain import retrain
    from segops.data.place import dir_md5
    from segops.lineage.audit import audit

    source = _upload_nuclei(tmp_path, "datasets/cells")
    ws = dvc_workspace(tmp_path, commit=True)
    (ws / ".gitignore").write_text("/runs\n/mlflow\n")
    monkeypatch.chdir(ws)
    sets = [
        "data.image_size=32",
        "data.val_fraction=0.34",
        "model.options={width: 4, levels: 3}",
        "train.epochs=1",
        "train.warmup_epochs=0",
        f"train.out_dir={ws / 'runs' / 'latest'}",
        "evaluate.worst_k=2",
        f"tracking.artifact_root={ws / 'mlflow' / 'artifacts'}",
        "promotion.bootstrap_samples=200",
    ]
    out = retrain(params=None, overrides=sets, dataset="s3://dvc/datasets/cells", workspace=".")
    assert out["model"]["name"] == "segops-cells" and out["decision"]["promote"]
    assert out["data"]["dataset"] == "data/cells"
    assert out["data"]["dataset_md5"] == dir_md5(ws / "data" / "cells")
    copied = {p.relative_to(source): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    assert all((ws / "data" / "cells" / rel).read_bytes() == b for rel, b in copied.items())
    assert audit(f"models:/segops-cells/{out['model']['version']}", ws).ok
