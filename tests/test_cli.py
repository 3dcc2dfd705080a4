"""The `segops` command end to end, as a user runs it (subprocesses, real files)."""

import json
import re
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


COMMANDS = {  # command -> the start of its line in `segops --help`
    "run": "Run the `retrain` Prefect flow: data to a registered, gated",
    "train": "Check the dataset, then train; checkpoints every epoch",
    "evaluate": "Evaluate a registered model or a checkpoint",
    "predict": "Predict masks at original size",
    "promote": "Put a registered version through the promotion gate",
    "serve": "Serve a registered model over HTTP",
    "audit": "Follow a registered model's lineage",
    "data": "Build and inspect datasets.",
    "models": "The model zoo (no subcommand) and the registry",
}
OPTIONS = {  # subcommand -> (an option, the start of its description)
    ("train",): ("--resume", "continue from <train.out_dir>/checkpoints/last.pt"),
    ("evaluate",): ("--split", "train, val or test (evaluate.split)"),
    ("predict",): ("--checkpoint", "a checkpoint instead"),
    ("data", "shapes"): ("--n", "number of samples (default: shapes.n)"),
    ("data", "inspect"): ("--dataset", "dataset root (overrides data.root)"),
}


def test_help_lists_every_command_with_its_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at 80 columns in a pipe
    top = segops("--help", cwd=tmp_path).stdout
    for command, summary in COMMANDS.items():
        assert re.search(rf"^│ {command} +{re.escape(summary)}", top, re.M), (command, top)


@pytest.mark.parametrize("sub", list(OPTIONS), ids=" ".join)
def test_help_of_each_command_describes_its_options(tmp_path, monkeypatch, sub):
    monkeypatch.setenv("COLUMNS", "200")
    text = segops(*sub, "--help", cwd=tmp_path).stdout
    option, description = OPTIONS[sub]
    assert f"segops.cli.main {' '.join(sub)} [OPTIONS]" in text
    assert re.search(rf"^│ .*{option} .*{re.escape(description)}", text, re.M), text
    assert re.search(r"--params +-p .*params file \(one section per step\)", text), text


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
    assert proc.returncode == 2
    assert "no checkpoint at runs/latest/checkpoints/best.pt" in proc.stderr
    assert "segops evaluate models:/NAME@champion" in proc.stderr


def test_history_table_names_each_data_identity_and_its_kind(monkeypatch):
    """`segops models history`: a registration's data is a DVC md5, a scoring's a listing
    hash; the column says which, not "data md5" for both."""
    import io

    from rich.console import Console

    from segops.cli import report

    shown = Console(width=250, record=True, file=io.StringIO())
    monkeypatch.setattr(report, "console", shown)
    events = [
        {"at": "2026-12-02T10:00:00.000+00:00", "version": "1", "event": "registered",
         "data": "0123456789abcdef.dir", "data_kind": "md5", "mean_iou": "0.5",
         "flow_run": "f1", "detail": "run r1"},
        {"at": "2026-12-02T11:00:00.000+00:00", "version": "1", "event": "scored",
         "data": "fedcba9876543210ffff", "data_kind": "s3-listing", "flow_run": "f2",
         "detail": "11 images of s3://b/in"},
        {"at": "2026-12-02T12:00:00.000+00:00", "version": "1", "event": "scored",
         "data": "aaaabbbbccccdddd", "data_kind": "listing", "flow_run": "f3",
         "detail": "3 images of /data/in"},
    ]  # fmt: skip
    report.print_history("m", events)
    text = shown.export_text()
    assert "data identity" in text and "data md5" not in text
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines()]
    data = {row[-1]: row[3] for row in rows if len(row) == 7 and row[1] == "1"}
    assert data == {
        "run r1": "md5 0123456789ab",
        "11 images of s3://b/in": "s3-listing fedcba987654",
        "3 images of /data/in": "listing aaaabbbbcccc",
    }
