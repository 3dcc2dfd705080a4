"""A user's own dataset, outside the repository, after a `shapes` champion exists: the flow
stops before any work when it would land under the shapes model's name, and otherwise trains,
registers under the dataset's own name, with lineage naming that dataset's own hash."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import dvc_workspace, write_sample
from mlflow import MlflowClient

from segops.data.place import dir_md5
from segops.data.shapes import generate_shapes
from segops.errors import ConfigError

pytestmark = pytest.mark.slow


def nuclei(root: Path, n: int = 24) -> Path:
    """Two classes (background, nucleus) in 40x48 grey-ish images: not shapes-like."""
    rng = np.random.default_rng(5)
    for i in range(n):
        mask = np.zeros((40, 48), np.uint8)
        y, x = rng.integers(4, 28), rng.integers(4, 36)
        mask[y : y + 9, x : x + 9] = 1
        image = rng.integers(0, 60, (40, 48, 3), dtype=np.uint8)
        image[mask == 1] += 150
        write_sample(root, f"cell{i:02d}", image, mask)
    (root / "classes.txt").write_text("background\nnucleus\n")
    return root


def overrides(ws: Path, dataset: Path) -> list[str]:
    return [
        f"data.root={dataset}",
        "data.image_size=32",
        "data.val_fraction=0.34",
        "data.test_fraction=0.2",
        "model.options={width: 4, depth: 2}",
        "train.epochs=1",
        "train.batch_size=8",
        "train.warmup_epochs=0",
        "train.deterministic=true",
        f"train.out_dir={ws / 'runs' / 'latest'}",
        "evaluate.worst_k=2",
        f"tracking.artifact_root={ws / 'mlflow' / 'artifacts'}",
        "promotion.bootstrap_samples=200",
    ]


def commit_all(ws: Path) -> None:
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "data"]
    subprocess.run(git, cwd=ws, check=True)


def test_dataset_outside_the_repo_gets_its_own_name_lineage_and_audit(
    harness, tmp_path, monkeypatch, own_mlflow
):
    from flows.retrain import retrain
    from segops.lineage.audit import audit
    from segops.lineage.reproduce import reproduce

    ws = dvc_workspace(tmp_path, commit=True)
    (ws / ".gitignore").write_text("/runs\n/mlflow\n")
    monkeypatch.chdir(ws)
    generate_shapes(ws / "data" / "shapes", n=30, size=32, seed=4)
    shapes = retrain(params=None, overrides=overrides(ws, Path("data/shapes")), workspace=".")
    assert shapes["model"]["name"] == "segops-shapes" and shapes["decision"]["promote"]
    commit_all(ws)  # data.dvc tracked by git: the next run rewrites it, which is not "dirty"
    dvc_before = (ws / "data.dvc").read_text()
    runs_before = len(mlflow.search_runs(search_all_experiments=True))

    mine = nuclei(tmp_path / "elsewhere" / "nuclei")
    with pytest.raises(ConfigError, match=r"predicts classes .*nucleus.*promotion\.model_name"):
        retrain(
            params=None,
            overrides=[*overrides(ws, mine), "promotion.model_name=segops-shapes"],
            workspace=".",
        )
    assert not (ws / "data" / "nuclei").exists() and (ws / "data.dvc").read_text() == dvc_before
    assert len(mlflow.search_runs(search_all_experiments=True)) == runs_before  # no new run

    own = retrain(params=None, overrides=overrides(ws, mine), workspace=".")
    model = own["model"]
    # the test split is scored apart from the gate's split, and logged as test_* / eval_test/
    test = own["metrics"]["test"]
    assert test is not None and 0.0 <= test["mean_iou"] <= 1.0
    run = MlflowClient().get_run(model["run_id"])
    assert run.data.metrics["test_mean_iou"] == pytest.approx(test["mean_iou"], abs=1e-6)
    logged = {a.path for a in MlflowClient().list_artifacts(model["run_id"], "eval_test")}
    assert "eval_test/metrics.json" in logged
    assert model["name"] == "segops-nuclei" and model["version"] == "1"
    assert dir_md5(ws / "data" / "nuclei") == dir_md5(mine)  # imported as it was
    tags = MlflowClient().get_run(model["run_id"]).data.tags
    assert tags["segops.dataset.md5"] == dir_md5(mine) == own["data"]["dataset_md5"]
    assert tags["segops.dataset.path"] == "data/nuclei"
    assert tags["segops.data.classes"] == '["background", "nucleus"]'
    assert tags["segops.data.channels"] == "3"  # the readers give RGB (IMAGE_CHANNELS)
    assert tags["segops.git.dirty"] == "false"
    version = MlflowClient().get_model_version("segops-nuclei", "1").tags
    assert version["segops.dataset.md5"] == dir_md5(mine)

    again = retrain(params=None, overrides=overrides(ws, mine), workspace=".")
    assert again["skipped"] and again["model"]["uri"] == "models:/segops-nuclei/1"
    shapes_again = retrain(params=None, overrides=overrides(ws, Path("data/shapes")), workspace=".")
    assert shapes_again["skipped"] and shapes_again["model"]["name"] == "segops-shapes"

    result = audit("models:/segops-nuclei@champion", ws)
    assert result.ok, result.to_markdown()
    links = {link.name: link for link in result.links}
    assert links["dataset"].status == "ok" and dir_md5(mine) in links["dataset"].detail
    rebuilt = reproduce("models:/segops-nuclei@champion", tmp_path / "reproduce")
    assert rebuilt.weights_identical and rebuilt.dataset_hash_match
    assert rebuilt.dataset_md5_match is True
