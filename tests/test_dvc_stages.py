"""dvc.yaml: `dvc repro`, `dvc exp run -S`, `dvc metrics diff` and `dvc plots diff` for real,
in a temporary git + DVC copy of the project's stage file with a tiny dataset and config."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from servers import bin_on_path

from segops.config import load_config, save_config
from segops.data.shapes import generate_shapes

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def sh(*args: str, cwd: Path) -> str:
    env = bin_on_path()  # dvc runs `segops` by name from dvc.yaml
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_repro_experiment_metrics_and_plots(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(ROOT / "dvc.yaml", ws)
    cfg = load_config(
        ROOT / "params.yaml",
        [
            "shapes.n=30",
            "shapes.size=32",
            "data.image_size=32",
            "data.val_fraction=0.3",
            "model.options={width: 4, depth: 2}",
            "train.epochs=1",
            "evaluate.worst_k=2",
        ],
    )
    save_config(cfg, ws / "params.yaml")
    generate_shapes(ws / "data" / "shapes", n=30, size=32, seed=0)
    sh("git", "init", "-q", cwd=ws)
    sh("git", "config", "user.email", "ci@example.com", cwd=ws)
    sh("git", "config", "user.name", "ci", cwd=ws)
    sh("dvc", "init", "-q", cwd=ws)
    sh("dvc", "repro", cwd=ws)
    metrics = json.loads((ws / "runs/latest/eval/metrics.json").read_text())
    assert 0 <= metrics["mean_iou"] <= 1
    assert (ws / "dvc.lock").is_file() and (ws / "runs/latest/validation/validation.json").is_file()
    sh("git", "add", "-A", cwd=ws)
    sh("git", "commit", "-qm", "baseline", cwd=ws)
    assert "didn't change" in sh("dvc", "repro", cwd=ws)  # nothing changed: nothing reruns
    sh("dvc", "exp", "run", "-S", "train.lr=0.01", cwd=ws)
    assert "lr: 0.01" in (ws / "params.yaml").read_text()
    diff = sh("dvc", "metrics", "diff", "--all", "--json", cwd=ws)
    assert "runs/latest/eval/metrics.json" in diff and "mean_iou" in diff
    params = sh("dvc", "params", "diff", "--json", cwd=ws)
    assert "train.lr" in params
    sh("dvc", "plots", "diff", "-o", "plots_out", cwd=ws)
    html = (ws / "plots_out" / "index.html").read_text()
    for title in ("Loss", "Validation mean IoU", "Per-class IoU", "worst_overlays.png"):
        assert title in html, title
