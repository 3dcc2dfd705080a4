"""Mask R-CNN through the same `retrain` flow as the semantic models: validated, versioned,
trained, evaluated (COCO mask AP), registered, gated on mask AP with a per-image bootstrap,
reported, audited and served (masks, classes and scores)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import dvc_workspace
from mlflow import MlflowClient
from PIL import Image

from segops.data.shapes import generate_shapes
from segops.serving.pyfunc import decode_png, encode_png

pytestmark = pytest.mark.slow

MODEL = "segops-instances"


@pytest.fixture
def workspace(tmp_path, monkeypatch, own_mlflow):
    """A committed git + DVC workspace with a local remote, tiny instance shapes and its own
    MLflow."""
    ws = dvc_workspace(tmp_path, commit=True)
    generate_shapes(ws / "data" / "shapes", n=15, size=64, seed=5, instances="folder")
    monkeypatch.chdir(ws)
    return ws


def run_flow(ws: Path, *extra: str) -> dict:
    from flows.retrain import retrain

    overrides = [
        f"data.root={ws / 'data' / 'shapes'}",
        "data.format=folder_instance",
        "data.image_size=64",
        "data.val_fraction=0.34",
        "model.name=maskrcnn_resnet50_fpn",
        "model.options={min_size: 64, max_size: 64, trainable_backbone_layers: 0}",
        "train.epochs=1",
        "train.batch_size=2",
        "train.lr=0.0005",
        "train.warmup_epochs=0",
        "train.device=cpu",
        "train.threads=2",  # one count for the run and its reproduction (auto may differ)
        f"train.out_dir={ws / 'runs' / 'latest'}",
        "evaluate.batch_size=2",
        "evaluate.worst_k=2",
        f"versioning.path={ws / 'data'}",
        f"tracking.artifact_root={ws / 'mlflow' / 'artifacts'}",
        f"promotion.model_name={MODEL}",
        "promotion.bootstrap_samples=200",
        *extra,
    ]
    return retrain(params=None, overrides=overrides, workspace=str(ws))


def test_maskrcnn_is_trained_gated_on_mask_ap_registered_and_served(harness, workspace):
    from segops.errors import ConfigError
    from segops.lineage.audit import audit
    from segops.lineage.reproduce import reproduce

    first = run_flow(workspace)
    assert first["model"]["version"] == "1" and first["decision"]["promote"] is True
    assert first["decision"]["metric"] == "mask_ap"
    assert first["decision"]["reasons"][0].startswith("no champion yet")
    assert "mask AP" in first["decision"]["reasons"][0]
    client = MlflowClient()
    run = client.get_run(first["model"]["run_id"])
    for key in ("mask_ap", "mask_ap50", "mask_ap75", "mask_ar", "mean_iou", "val_AP"):
        assert 0.0 <= run.data.metrics[key] <= 1.0, key
    assert run.data.tags["segops.onnx.status"] == "skipped"
    assert run.data.tags["segops.explanations"].startswith("skipped")
    metrics = json.loads(Path(first["metrics"]["metrics_json"]).read_text())
    assert metrics["kind"] == "instance" and metrics["mask_ap"] == run.data.metrics["mask_ap"]
    per_image = pd.read_csv(Path(first["metrics"]["metrics_json"]).with_name("per_image.csv"))
    assert list(per_image.columns[:3]) == ["id", "ap", "iou"] and len(per_image) == 5
    version1 = client.get_model_version(MODEL, "1")
    assert version1.tags["promotion.metric"] == "mask_ap" and "champion" in version1.aliases
    assert version1.tags["metrics.mask_ap"] == str(run.data.metrics["mask_ap"])
    report = first["report"]
    assert report["error"] is None, report
    html = Path(report["html"]).read_text()
    assert "mask ap" in html and "mask AP" in html  # headline row and per-class column

    second = run_flow(workspace, "train.seed=1", "train.lr=0.0003", "promotion.min_delta=0")
    assert second["model"]["version"] == "2" and second["decision"]["metric"] == "mask_ap"
    reasons = second["decision"]["reasons"]
    assert reasons[0].startswith("mask AP") and "vs champion" in reasons[0]
    images = second["decision"]["n_images"] + second["decision"]["n_dropped"]
    assert images == 5 and any("paired bootstrap" in r or "no image" in r for r in reasons)
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["promotion.champion_version"] == "1" and tags["promotion.metric"] == "mask_ap"
    assert second["report"]["error"] is None, second["report"]
    listing = _cli(workspace, "models", "registered", MODEL)
    assert listing.returncode == 0 and "mask_ap 0." in listing.stdout + listing.stderr
    compared = Path(second["report"]["html"]).read_text()
    assert 'id="comparison"' in compared and f"models:/{MODEL}/1" in compared

    runs = len(client.search_runs([run.info.experiment_id]))
    with pytest.raises(ConfigError, match=r"cannot compare them.*--set promotion.model_name="):
        run_flow(workspace, "model.name=unet", "model.options={}", "data.format=folder")
    assert len(client.search_runs([run.info.experiment_id])) == runs
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 2

    audited = audit(f"models:/{MODEL}/1", workspace)
    assert audited.ok, audited.broken
    rebuilt = reproduce(f"models:/{MODEL}/1", workspace.parent / "reproduced")
    assert rebuilt.config_hash_match and rebuilt.dataset_hash_match
    assert rebuilt.weights_identical, rebuilt.max_weight_diff

    served = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    request = pd.DataFrame({"image": [encode_png(image)]})
    out = served.predict(request, params={"score_threshold": 0.0})
    row = out.iloc[0]
    assert {"masks", "classes", "scores", "boxes", "mask"} <= set(out.columns)
    assert len(row["masks"]) == len(row["classes"]) == len(row["scores"]) == row["instances"]
    classes = {"ellipse", "rectangle", "triangle", "cross"}
    assert set(row["classes"]) <= classes
    for mask in row["masks"]:
        decoded = decode_png(mask)
        assert decoded.shape == (48, 80)
    _served_over_http(workspace, f"models:/{MODEL}@champion", image)


def _served_over_http(ws: Path, model: str, image: np.ndarray) -> None:
    """`segops serve MODEL` answers a PNG with masks, classes and scores, a bad row with 400."""
    import sys

    from servers import bin_on_path, free_port, running
    from serving.test_serving import post

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "segops.cli.main", "serve", model, "--port", str(port)]
    log = ws / "serve.log"
    with running(cmd, base + "/ping", log, bin_on_path(), cwd=ws, timeout=120, grace=20):
        rows = [{"image": encode_png(image)}]
        request = {"dataframe_records": rows, "params": {"score_threshold": 0}}
        status, body = post(base + "/invocations", request)
        assert status == 200, body
        (row,) = body["predictions"]
        assert len(row["masks"]) == len(row["classes"]) == len(row["scores"]) == row["instances"]
        status, body = post(base + "/invocations", {"dataframe_records": [{"image": "eA=="}]})
        assert status == 400 and "row 0" in json.dumps(body)


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`segops ARGS` in `cwd` (no params.yaml there: the built-in defaults plus --set)."""
    import os
    import sys

    return subprocess.run(
        [sys.executable, "-m", "segops.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_commands_on_an_instance_checkpoint(tmp_path):
    """`segops train`, `evaluate` and `predict` take an instance model; ONNX export and
    Grad-CAM refuse it with a clear error."""
    from segops.errors import ConfigError
    from segops.explain import resolve_layer
    from segops.inference import load_trained
    from segops.serving.onnx import export_onnx

    root = generate_shapes(tmp_path / "ds", n=9, size=64, seed=6, instances="folder")
    sets = [
        f"train.out_dir={tmp_path / 'run'}", "data.format=folder_instance", "data.image_size=64",
        "model.name=maskrcnn_resnet50_fpn", "train.epochs=1", "train.batch_size=2",
        "model.options={min_size: 64, max_size: 64, trainable_backbone_layers: 0}",
        "train.device=cpu", "evaluate.batch_size=2", "evaluate.worst_k=2",
    ]  # fmt: skip
    flags = [f for s in sets for f in ("--set", s)]
    trained = _cli(tmp_path, "train", "--dataset", str(root), *flags)
    assert trained.returncode == 0, trained.stderr
    evaluated = _cli(tmp_path, "evaluate", "--dataset", str(root), *flags)
    assert evaluated.returncode == 0 and "mask AP" in evaluated.stdout + evaluated.stderr
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    predicted = _cli(tmp_path, "predict", str(root / "images"), str(tmp_path / "preds"),
                     "--checkpoint", str(checkpoint))  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    mask = np.array(Image.open(next((tmp_path / "preds").glob("*_mask.png"))))
    assert mask.shape == (64, 64)

    model = load_trained(checkpoint)
    with pytest.raises(ConfigError, match="ONNX export works on semantic models"):
        export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="Grad-CAM works on semantic models"):
        resolve_layer(model)
    wrong = _cli(tmp_path, "train", "--dataset", str(root), *flags,
                 "--set", "data.format=folder")  # fmt: skip
    assert wrong.returncode != 0 and "needs instance annotations" in wrong.stderr
