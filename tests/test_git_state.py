"""The git-dirty rule of lineage: files the flow itself rewrites (the `.dvc` file of the
versioned tree) do not make the tree dirty; any other change to a tracked file does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from segops.config import load_config
from segops.steps.setup import source_state
from segops.tracking import git_state

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one commit holding `data.dvc`, `train.py` and `untracked/` aside."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 1.dir\n  path: data\n")
    (tmp_path / "train.py").write_text("print('train')\n")
    subprocess.run(["git", "add", "data.dvc", "train.py"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "commit", "-qm", "init"], cwd=tmp_path, check=True)
    return tmp_path


def test_a_clean_tree_names_its_commit_and_is_clean(repo):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    (repo / "notes.txt").write_text("an untracked file\n")  # untracked files never count
    assert git_state(repo, ignore=["data.dvc"]) == {"commit": head.stdout.strip(), "dirty": "false"}


def test_the_rewritten_dvc_file_alone_is_not_dirty(repo):
    (repo / "data.dvc").write_text("outs:\n- md5: 2.dir\n  path: data\n")  # as `dvc add` does
    assert git_state(repo, ignore=["data.dvc"])["dirty"] == "false"
    assert git_state(repo)["dirty"] == "true"  # the rule, not git, leaves it out


def test_another_modified_tracked_file_is_dirty(repo):
    (repo / "data.dvc").write_text("outs:\n- md5: 2.dir\n  path: data\n")
    (repo / "train.py").write_text("print('changed')\n")
    assert git_state(repo, ignore=["data.dvc"])["dirty"] == "true"


def test_a_staged_change_is_dirty_too(repo):
    (repo / "train.py").write_text("print('staged')\n")
    subprocess.run(["git", "add", "train.py"], cwd=repo, check=True)
    assert git_state(repo, ignore=["data.dvc"])["dirty"] == "true"


@pytest.mark.parametrize("absolute", [False, True])
def test_the_flow_leaves_out_its_own_dvc_file_however_the_path_is_given(repo, absolute):
    """`source_state`, what the flow records: `versioning.path` relative or absolute."""
    path = repo / "data" if absolute else Path("data")
    cfg = load_config(None, [f"versioning.path={path}"])
    (repo / "data.dvc").write_text("outs:\n- md5: 2.dir\n  path: data\n")
    assert source_state(cfg, str(repo)).dirty is False
    (repo / "train.py").write_text("print('changed')\n")
    assert source_state(cfg, str(repo)).dirty is True


def test_outside_a_repository_the_state_is_unknown_and_dirty(tmp_path):
    assert git_state(tmp_path) == {"commit": "unknown", "dirty": "true"}
