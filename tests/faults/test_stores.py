"""Unlucky operators and their stores: an MLflow server or Prefect API that is not there, a DVC
remote that cannot be written, a bad `versioning.remote_url`, an overwritten remote object.

Each is found in seconds and named; nothing is left half-changed.
"""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

import pytest
from conftest import dvc_workspace
from servers import free_port

from segops.config import VersioningConfig, load_config
from segops.data.shapes import generate_shapes
from segops.lineage.audit import BROKEN, OK, deep_check
from segops.preflight import StoreUnreachable, check_stores
from segops.versioning import VersioningError, remote_has, version_dataset

# dvc 3.67 itself trips a pygtrie deprecation on every add; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Path:
    """A git + DVC workspace with remote "local" (tmp_path/remote) and 8 samples in data/."""
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))
    monkeypatch.chdir(tmp_path)
    workspace = dvc_workspace(tmp_path)
    generate_shapes(workspace / "data", n=8, size=32, seed=0)
    return workspace


def _problems(cfg, ws: Path) -> tuple[list[str], float]:
    start = time.monotonic()
    with pytest.raises(StoreUnreachable) as caught:
        check_stores(cfg, ws)
    return caught.value.problems, time.monotonic() - start


def test_reachable_stores_pass_and_are_listed(ws):
    lines = check_stores(load_config(), ws)
    assert [line.split()[0] for line in lines] == ["mlflow", "dvc"]  # no PREFECT_API_URL
    assert all(line.endswith(": ok") for line in lines)
    assert str(ws.parent / "remote") in lines[1]


@pytest.mark.parametrize(
    ("store", "variable", "path", "fix"),
    [
        ("mlflow", "MLFLOW_TRACKING_URI", "", "MLFLOW_TRACKING_URI"),
        ("prefect", "PREFECT_API_URL", "/api", "prefect server start"),
    ],
)
def test_an_unreachable_server_is_named_in_seconds(ws, monkeypatch, store, variable, path, fix):
    url = f"http://127.0.0.1:{free_port()}{path}"
    monkeypatch.setenv(variable, url)
    problems, took = _problems(load_config(), ws)
    assert took < 10
    (line,) = problems
    assert line.startswith(f"{store} {url}: unreachable") and fix in line


def test_a_server_that_never_answers_is_named_after_the_timeout(ws, monkeypatch):
    with socket.socket() as silent:  # accepts connections, never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        start = time.monotonic()
        with pytest.raises(StoreUnreachable, match="timed out") as caught:
            check_stores(load_config(), ws, timeout=1.0)
    assert time.monotonic() - start < 5 and url in str(caught.value)


@pytest.mark.parametrize("where", ["remote_url", "dvc_config"])
def test_dvc_remote_under_a_file_is_named(ws, tmp_path, where):
    (tmp_path / "a_file").write_text("not a folder")
    bad = tmp_path / "a_file" / "remote"
    if where == "dvc_config":  # the remote as .dvc/config has it, or as the override sets it
        (ws / ".dvc" / "config").write_text(
            f"[core]\n    remote = local\n['remote \"local\"']\n    url = {bad}\n"
        )
        cfg = load_config()
    else:
        cfg = load_config(None, [f"versioning.remote_url={bad}"])
    (line,) = _problems(cfg, ws)[0]
    assert line.startswith(f"dvc remote 'local' {bad}:")
    assert f"{tmp_path / 'a_file'} is a file where a folder is needed" in line


def test_every_failing_store_gets_its_own_line(ws, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    (tmp_path / "a_file").write_text("")
    cfg = load_config(None, [f"versioning.remote_url={tmp_path / 'a_file' / 'r'}"])
    problems, took = _problems(cfg, ws)
    assert took < 10
    assert [p.split()[0] for p in problems] == ["mlflow", "dvc", "prefect"]
    assert str(StoreUnreachable(problems)).count("\n  - ") == 3


def test_unconfigured_remote_is_named_without_pushing(ws):
    cfg = load_config(None, ["versioning.remote=elsewhere"])
    (line,) = _problems(cfg, ws)[0]
    assert "'elsewhere'" in line and "not configured" in line
    quiet = load_config(None, ["versioning.remote=elsewhere", "versioning.push=false"])
    assert [line.split()[0] for line in check_stores(quiet, ws)] == ["mlflow"]


@pytest.mark.parametrize("name", ["local", "backup"])  # change the remote's URL / add one
def test_failed_remote_url_leaves_dvc_config_byte_for_byte(ws, tmp_path, name):
    version_dataset(ws, VersioningConfig(remote="local"))
    before = (ws / ".dvc" / "config").read_bytes()
    (tmp_path / "a_file").write_text("")
    bad = VersioningConfig(remote=name, remote_url=str(tmp_path / "a_file" / "r"))
    generate_shapes(ws / "data" / "more", n=2, size=16, seed=1)  # something to push
    with pytest.raises(VersioningError, match=r"push.*\.dvc/config\.local was put back"):
        version_dataset(ws, bad)
    assert (ws / ".dvc" / "config").read_bytes() == before
    assert not (ws / ".dvc" / "config.local").exists()  # where the call's URL went, removed
    # A later plain run pushes to the remote that was there before.
    assert version_dataset(ws, VersioningConfig(remote="local")).pushed > 0


def _overwrite(remote: Path, oid: str, data: bytes) -> None:
    path = remote / "files" / "md5" / oid[:2] / oid[2:]
    path.chmod(0o644)  # DVC stores objects read-only
    path.write_bytes(data)


def test_deep_check_finds_an_overwritten_object_the_plain_check_passes(ws, tmp_path):
    v = version_dataset(ws, VersioningConfig(remote="local"))
    intact = deep_check(v.dvc_text, v.remote_url)
    assert intact.status == OK and "18 objects re-hashed in" in intact.detail
    mask = (ws / "data" / "masks" / "00002.png").read_bytes()
    oid = hashlib.md5(mask).hexdigest()
    _overwrite(tmp_path / "remote", oid, mask[:-1] + bytes([mask[-1] ^ 1]))
    assert remote_has(v.dvc_text, v.remote_url)  # what the plain audit asks: still "intact"
    link = deep_check(v.dvc_text, v.remote_url)
    assert (link.name, link.status) == ("data.deep", BROKEN)
    assert f"corrupt: {oid}" in link.detail and "re-hashed in" in link.detail
    assert "missing" not in link.detail


def test_deep_check_names_a_missing_object_and_a_corrupt_manifest(ws, tmp_path):
    v = version_dataset(ws, VersioningConfig(remote="local"))
    oid = hashlib.md5((ws / "data" / "classes.txt").read_bytes()).hexdigest()
    (tmp_path / "remote" / "files" / "md5" / oid[:2] / oid[2:]).unlink()
    assert f"missing: {oid}" in deep_check(v.dvc_text, v.remote_url).detail
    _overwrite(tmp_path / "remote", v.md5, b"[]")
    link = deep_check(v.dvc_text, v.remote_url)
    assert link.status == BROKEN and f"manifest {v.md5}" in link.detail
