"""Through the pipeline's steps (those the flow's Prefect tasks call) with
`train.distributed.nproc_per_node=2`: the train step launches torchrun, takes rank 0's result,
and the registered version records world size 2; audit finds the lineage intact; reproduce
retrains with 2 ranks and gets identical weights on CPU."""

from __future__ import annotations

import os

import pytest
from mlflow import MlflowClient
from test_lineage import _git, _make_version, _overrides

from segops.data.shapes import generate_shapes

pytestmark = pytest.mark.slow

MODEL = "segops-ddp"
URI = f"models:/{MODEL}@champion"


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A committed git + DVC workspace with a 24-image dataset and its own MLflow store."""
    import mlflow

    from segops.versioning import configure_remote, ensure_workspace

    ws = tmp_path / "ws"
    ws.mkdir()
    _git(ws, "init", "-q")
    ensure_workspace(ws)
    configure_remote(ws, "local", str(tmp_path / "remote"))
    (ws / "README").write_text("ddp flow test workspace\n")
    _git(ws, "add", "-A")
    _git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    generate_shapes(ws / "data" / "shapes", n=24, size=32, seed=5)
    saved = os.environ["MLFLOW_TRACKING_URI"]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    monkeypatch.chdir(ws)
    yield ws
    mlflow.set_tracking_uri(None)  # this also unsets MLFLOW_TRACKING_URI: restore it after
    os.environ["MLFLOW_TRACKING_URI"] = saved


def test_two_ranks_through_the_steps_record_audit_and_reproduce(workspace, tmp_path):
    from segops.config import load_config
    from segops.lineage.audit import audit
    from segops.lineage.reproduce import reproduce

    extra = ["train.distributed.nproc_per_node=2", f"promotion.model_name={MODEL}"]
    cfg = load_config(None, [*_overrides(workspace), *extra])
    from segops.steps.setup import attempt_config

    config = attempt_config(cfg, "attempt-ddp")
    made = _make_version(config, workspace, "attempt-ddp")
    tags = MlflowClient().get_model_version(MODEL, made["model"].version).tags
    assert tags["segops.train.world_size"] == "2" and tags["segops.train.backend"] == "gloo"
    assert (tags["segops.train.per_rank_batch"], tags["segops.train.global_batch"]) == ("8", "16")
    run_dir = tags["segops.run_dir"]
    assert (workspace / run_dir / "distributed" / "result.json").is_file() or os.path.isfile(
        os.path.join(run_dir, "distributed", "result.json")
    )  # rank 0's result, which the train step read

    report = audit(URI, workspace)
    assert report.ok, report.to_markdown()

    again = reproduce(URI, tmp_path / "repro")
    assert again.world_size == 2, again.to_markdown()
    assert again.config_hash_match and again.dataset_hash_match
    assert again.weights_identical and again.max_weight_diff == 0.0, again.to_markdown()
    assert "world size 2 (as recorded)" in (tmp_path / "repro" / "reproduce.md").read_text()
