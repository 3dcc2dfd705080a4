"""The `retrain` flow under Prefect's test harness with `train.distributed.nproc_per_node=2`:
its train task launches torchrun and takes rank 0's result; the registered version records
world size 2; rank 0 alone logged the epochs to MLflow (one value per epoch, no duplicates
from rank 1); audit finds the lineage intact; reproduce retrains with 2 ranks and gets
identical weights on CPU."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow import MlflowClient
from test_lineage import _git, _overrides

from segops.data.shapes import generate_shapes

pytestmark = pytest.mark.slow

MODEL = "segops-ddp"
URI = f"models:/{MODEL}@champion"


@pytest.fixture
def workspace(tmp_path, monkeypatch, own_mlflow):
    """A committed git + DVC workspace with a 24-image dataset and its own MLflow store."""
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
    monkeypatch.chdir(ws)
    return ws


def test_two_ranks_through_the_flow_record_log_once_audit_and_reproduce(
    harness, workspace, tmp_path
):
    from flows.retrain import retrain
    from segops.lineage.audit import audit
    from segops.lineage.reproduce import reproduce

    extra = ["train.distributed.nproc_per_node=2", f"promotion.model_name={MODEL}"]
    done = retrain(
        params=None, overrides=[*_overrides(workspace), *extra], workspace=str(workspace)
    )
    assert done["decision"]["promote"] is True, done
    client = MlflowClient()
    tags = client.get_model_version(MODEL, done["model"]["version"]).tags
    assert tags["segops.train.world_size"] == "2" and tags["segops.train.backend"] == "gloo"
    assert (tags["segops.train.per_rank_batch"], tags["segops.train.global_batch"]) == ("8", "16")
    run_dir = workspace / tags["segops.run_dir"]
    assert (run_dir / "distributed" / "result.json").is_file()  # rank 0's, read by the task

    run_id = done["model"]["run_id"]
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    for name in ("train_loss", "val_loss", "val_miou", "images_per_s"):
        logged = client.get_metric_history(run_id, name)
        assert sorted(m.step for m in logged) == [1, 2], (name, logged)  # once per epoch
        assert [m.value for m in sorted(logged, key=lambda m: m.step)] == pytest.approx(
            history[name].tolist()
        )  # rank 0's epoch rows (the ranks' mean loss), not a rank's own

    report = audit(URI, workspace)
    assert report.ok, report.to_markdown()

    again = reproduce(URI, tmp_path / "repro")
    assert again.world_size == 2, again.to_markdown()
    assert again.config_hash_match and again.dataset_hash_match
    assert again.weights_identical and again.max_weight_diff == 0.0, again.to_markdown()
    assert "world size 2 (as recorded)" in (tmp_path / "repro" / "reproduce.md").read_text()
    assert (tmp_path / "repro" / "train" / "distributed" / "result.json").is_file()  # torchrun
