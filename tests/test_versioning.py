"""segops.versioning against real DVC: temporary workspaces and local-directory remotes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segops.config import VersioningConfig
from segops.data.shapes import generate_shapes
from segops.versioning import (
    VersioningError,
    configure_remote,
    ensure_workspace,
    find_workspace,
    read_version,
    remote_has,
    restore_dataset,
    version_dataset,
)

# dvc 3.67 itself trips a pygtrie deprecation on every add; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root, by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _object(remote: Path, oid: str) -> Path:
    return remote / "files" / "md5" / oid[:2] / oid[2:]


def _change_mask(ws: Path, name: str = "00003.png") -> None:
    path = ws / "data" / "masks" / name
    mask = np.asarray(Image.open(path)).copy()
    mask[:4, :4] = (mask[:4, :4] + 1) % 5
    Image.fromarray(mask).save(path)


@pytest.fixture(autouse=True)
def _site_cache(tmp_path, monkeypatch) -> None:
    # DVC keeps per-repo state in /var/tmp/dvc/repo/<hash>: one stale folder per test otherwise.
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))


@pytest.fixture
def workspace(tmp_path) -> Path:
    """A git + DVC workspace with an 8-sample shapes dataset under data/."""
    ws = tmp_path / "ws"
    ws.mkdir()
    for args in (["init", "-q"], ["config", "user.name", "t"], ["config", "user.email", "t@x"]):
        subprocess.run(["git", *args], cwd=ws, check=True)
    ensure_workspace(ws)
    generate_shapes(ws / "data", n=8, size=32, seed=0)
    return ws


@pytest.fixture
def cfg(tmp_path) -> VersioningConfig:
    return VersioningConfig(remote="store", remote_url=str(tmp_path / "remote"))


def test_first_version_pushes_and_records_the_dir_hash(workspace, cfg, tmp_path):
    v = version_dataset(workspace, cfg)
    out = yaml.safe_load((workspace / "data.dvc").read_text())["outs"][0]
    assert v.md5.endswith(".dir") and v.md5 == out["md5"]
    assert out["nfiles"] == 17 and v.path == "data" and v.dvc_file == "data.dvc"
    assert v.pushed == 18  # 8 images + 8 masks + classes.txt + the .dir manifest
    assert (v.remote, v.remote_url) == ("store", str(tmp_path / "remote"))
    assert v.dvc_text == (workspace / "data.dvc").read_text()
    assert _object(tmp_path / "remote", v.md5).is_file()
    assert "/data" in (workspace / ".gitignore").read_text()
    assert read_version(workspace) == replace(v, pushed=0)
    assert v.to_dict()["md5"] == v.md5 and set(v.to_dict()) == {f.name for f in fields(v)}


def test_unchanged_data_keeps_md5_and_pushes_nothing(workspace, cfg):
    first = version_dataset(workspace, cfg)
    second = version_dataset(workspace, cfg)
    assert second.md5 == first.md5 and second.dvc_text == first.dvc_text
    assert second.pushed == 0


def test_changed_mask_gives_new_version_and_old_one_restores(workspace, cfg, tmp_path):
    old = version_dataset(workspace, cfg)
    original = _files(workspace / "data")
    _change_mask(workspace)
    new = version_dataset(workspace, cfg)
    assert new.md5 != old.md5
    assert new.pushed == 2  # the changed mask and the new manifest
    restored = restore_dataset(old.dvc_text, old.remote_url, tmp_path / "old")
    assert _files(restored) == original
    latest = restore_dataset(new.dvc_text, new.remote_url, tmp_path / "new")
    assert _files(latest) == _files(workspace / "data") != original


def test_restore_into_fresh_folder_is_byte_identical(workspace, cfg, tmp_path):
    v = version_dataset(workspace, cfg)
    dest = restore_dataset(v.dvc_text, v.remote_url, tmp_path / "fresh" / "data")
    original = _files(workspace / "data")
    assert len(original) == 17 and _files(dest) == original
    assert [p.name for p in dest.parent.iterdir()] == ["data"]  # no temp folder left
    with pytest.raises(VersioningError, match="not an empty folder"):
        restore_dataset(v.dvc_text, v.remote_url, dest)


def test_remote_missing_object_is_detected_named_and_repaired_by_push(workspace, cfg, tmp_path):
    v = version_dataset(workspace, cfg)
    assert remote_has(v.dvc_text, v.remote_url)
    mask = (workspace / "data" / "masks" / "00000.png").read_bytes()
    oid = hashlib.md5(mask).hexdigest()
    _object(tmp_path / "remote", oid).unlink()
    assert not remote_has(v.dvc_text, v.remote_url)
    with pytest.raises(VersioningError, match=oid):
        restore_dataset(v.dvc_text, v.remote_url, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    # Plain `dvc push` would report nothing to do here; version_dataset re-sends the object.
    assert version_dataset(workspace, cfg).pushed == 1
    assert remote_has(v.dvc_text, v.remote_url)


def test_failed_push_names_step_and_keeps_previous_dvc_file(workspace, cfg, tmp_path):
    before = version_dataset(workspace, cfg).dvc_text
    _change_mask(workspace)
    (tmp_path / "a_file").write_text("not a folder")
    bad = VersioningConfig(remote="store", remote_url=str(tmp_path / "a_file" / "remote"))
    expected = r"dvc push of data to remote 'store' \(.*remote\) failed: .*left unchanged"
    with pytest.raises(VersioningError, match=expected):
        version_dataset(workspace, bad)
    assert (workspace / "data.dvc").read_text() == before


def test_failed_first_push_leaves_no_dvc_file(workspace, tmp_path):
    (tmp_path / "a_file").write_text("")
    bad = VersioningConfig(remote="store", remote_url=str(tmp_path / "a_file" / "r"))
    with pytest.raises(VersioningError, match="push"):
        version_dataset(workspace, bad)
    assert not (workspace / "data.dvc").exists()


def test_add_of_missing_folder_names_step_and_path(workspace, cfg):
    with pytest.raises(VersioningError, match=r"dvc add of nope failed"):
        version_dataset(workspace, cfg.model_copy(update={"path": Path("nope")}))


def test_no_push_and_no_git_workspace(tmp_path):
    ws = ensure_workspace(tmp_path / "plain")
    assert (ws / ".dvc").is_dir() and not (ws / ".git").exists()
    assert ensure_workspace(ws) == ws  # idempotent
    generate_shapes(ws / "data", n=2, size=16, seed=0)
    v = version_dataset(ws, VersioningConfig(push=False))
    assert (v.remote, v.remote_url, v.pushed) == ("", "", 0)
    assert find_workspace(ws / "data" / "masks") == ws


def test_configure_remote_is_idempotent_and_absolute(tmp_path):
    ws = ensure_workspace(tmp_path / "ws")
    configure_remote(ws, "Backup", "../store")
    configure_remote(ws, "backup", "../store")
    text = (ws / ".dvc" / "config").read_text()
    assert text.count('remote "backup"') == 1 and "remote = backup" in text
    assert f"url = {tmp_path / 'store'}" in text


def test_find_workspace_without_dvc_says_to_run_dvc_init(tmp_path):
    with pytest.raises(VersioningError, match=r"no DVC workspace at or above .*run `dvc init`"):
        find_workspace(tmp_path)


def test_parallel_calls_in_one_process_are_serialised(workspace, cfg):
    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(lambda _: version_dataset(workspace, cfg), range(4)))
    assert len({v.md5 for v in versions}) == 1
    assert sorted(v.pushed for v in versions) == [0, 0, 0, 18]


def test_parallel_processes_are_serialised(tmp_path):
    # Unserialised, racing config edits dropped `no_scm` from .dvc/config and every add failed.
    ws = ensure_workspace(tmp_path / "plain")
    generate_shapes(ws / "data", n=4, size=16, seed=0)
    code = (
        "import sys; from segops.config import VersioningConfig as C; "
        "from segops.versioning import version_dataset as v; "
        "print(v(sys.argv[1], C(remote='s', remote_url=sys.argv[2])).pushed)"
    )
    argv = [sys.executable, "-c", code, str(ws), str(tmp_path / "remote")]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = sorted(int(p.communicate(timeout=120)[0]) for p in procs)
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert outputs == [0, 0, 10]  # 4 images + 4 masks + classes.txt + manifest
    assert "no_scm = True" in (ws / ".dvc" / "config").read_text()
