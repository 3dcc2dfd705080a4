"""The `segops` command end to end, as a user runs it (subprocesses, real files)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def segops(*args, cwd, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "segops.cli.main", *args], cwd=cwd, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"segops {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def test_help_everywhere(tmp_path):
    top = segops("--help", cwd=tmp_path).stdout
    for command in ("train", "evaluate", "predict", "models", "data"):
        assert command in top
    for sub in (["train"], ["evaluate"], ["predict"], ["data", "shapes"], ["data", "inspect"]):
        assert "--help" in segops(*sub, "--help", cwd=tmp_path).stdout


def test_models_lists_the_zoo(tmp_path):
    out = segops("models", cwd=tmp_path).stderr
    assert "unet" in out and "deeplabv3_resnet50" in out


@pytest.mark.slow
def test_shapes_inspect_train_evaluate_predict(tmp_path):
    sets = [
        "--set",
        "model.options={width: 4, depth: 2}",
        "--set",
        "train.epochs=1",
        "--set",
        "data.image_size=32",
        "--set",
        "train.batch_size=8",
    ]
    segops("data", "shapes", "--n", "24", "--size", "32", "--seed", "1", cwd=tmp_path)
    assert len(list((tmp_path / "data/shapes/images").glob("*.png"))) == 24
    inspect = segops("data", "inspect", cwd=tmp_path).stderr
    assert "24 samples, 5 classes" in inspect and "rectangle" in inspect
    trained = segops("train", *sets, cwd=tmp_path)
    assert "best checkpoint: runs/latest/checkpoints/best.pt" in trained.stderr
    evaluated = segops("evaluate", *sets, cwd=tmp_path).stderr
    assert "mean IoU" in evaluated
    metrics = json.loads((tmp_path / "runs/latest/eval/metrics.json").read_text())
    assert 0 <= metrics["mean_iou"] <= 1
    segops("predict", "data/shapes/images", "preds", cwd=tmp_path)
    assert len(list((tmp_path / "preds").glob("*_mask.png"))) == 24


def test_user_errors_exit_2_with_a_clear_message(tmp_path):
    proc = segops("train", "--dataset", "nowhere", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "nowhere/images: no such directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = segops("train", "--set", "train.epocs=2", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "unknown key 'train.epocs'" in proc.stderr
    proc = segops("evaluate", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "no checkpoint at runs/latest/checkpoints/best.pt" in proc.stderr
    assert "segops evaluate models:/NAME@champion" in proc.stderr
