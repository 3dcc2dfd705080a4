import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config
from PIL import Image

from segops.errors import DatasetError
from segops.evaluate.report import evaluate_checkpoint
from segops.predict import predict_folder
from segops.train.loop import train


@pytest.fixture(scope="module")
def trained(shapes_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(shapes_root, out)
    train(cfg)
    return cfg


def test_evaluation_writes_metrics_tables_and_plots(trained):
    report = evaluate_checkpoint(trained)
    metrics = json.loads(Path(report.metrics_json).read_text())
    assert metrics["split"] == "val" and metrics["images"] == 10
    assert set(metrics) >= {
        "mean_iou",
        "mean_dice",
        "pixel_accuracy",
        "mean_precision",
        "mean_recall",
        "mean_f1",
        "per_class",
        "absent_classes",
    }
    mat = pd.read_csv(f"{report.out_dir}/confusion_matrix.csv", index_col=0).to_numpy()
    assert mat.sum() == 10 * 32 * 32 and metrics["pixel_accuracy"] == pytest.approx(
        np.trace(mat) / mat.sum(), abs=1e-6
    )
    per_image = pd.read_csv(report.per_image_csv)
    assert len(per_image) == 10 and per_image["iou"].between(0, 1).all()
    per_class = pd.read_csv(report.per_class_csv)
    assert list(per_class["class"]) == ["background", "ellipse", "rectangle", "triangle", "cross"]
    names = sorted(p.split("/")[-1] for p in report.plots)
    assert names == [
        "confusion_matrix.png",
        "curves.png",
        "per_class_iou.png",
        "worst_overlays.png",
    ]
    for path in report.plots:
        with Image.open(path) as img:
            assert img.size[0] > 300 and len(np.unique(np.asarray(img))) > 10  # not blank


def test_evaluation_refuses_other_classes(trained, folder_dataset):
    cfg = trained.model_copy(
        update={"data": trained.data.model_copy(update={"root": folder_dataset})}
    )
    with pytest.raises(DatasetError, match="was trained on classes"):
        evaluate_checkpoint(cfg)


def test_predict_writes_masks_at_original_size(trained, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(src / "b.jpg")
    ckpt = f"{trained.train.out_dir}/checkpoints/best.pt"
    written = predict_folder(ckpt, src, tmp_path / "out")
    assert [p.name for p in written] == ["a_mask.png", "b_mask.png"]
    mask = np.asarray(Image.open(tmp_path / "out" / "a_mask.png"))
    assert mask.shape == (50, 70) and mask.max() < 5
    assert Image.open(tmp_path / "out" / "b_overlay.png").size == (20, 20)


def test_predict_on_a_folder_without_images(trained, tmp_path):
    with pytest.raises(DatasetError, match="no images"):
        predict_folder(f"{trained.train.out_dir}/checkpoints/best.pt", tmp_path, tmp_path / "o")
