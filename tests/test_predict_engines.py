"""`segops predict` engines: local and Ray Data write the same bytes; errors, resume, bad input."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import scoring_images, tiny_config
from PIL import Image
from servers import free_port

from segops.errors import DatasetError
from segops.scoring.checks import EngineError, check_ray_address, check_source_folder
from segops.scoring.job import JobOptions, predict_job
from segops.scoring.source import checkpoint_source

N = 200  # tiny 32-pixel images: a few hundred, kept cheap


@pytest.fixture(scope="module")
def source(shapes_root, tmp_path_factory):
    """A tiny U-Net trained on 32x32 shapes, as a checkpoint source."""
    from segops.train.loop import train

    cfg = tiny_config(shapes_root, tmp_path_factory.mktemp("run"), "train.epochs=1")
    return checkpoint_source(train(cfg).best_checkpoint)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """N images of 32x32 and a few of other sizes, plus one corrupt file."""
    return scoring_images(tmp_path_factory.mktemp("images"), N, 20)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module (starting it costs seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_ray_writes_the_same_bytes_as_local_and_records_errors(
    source, images, tmp_path, ray_cluster
):
    local = predict_job(source, images, tmp_path / "local", JobOptions(batch_size=8))
    done: list[tuple[int, int]] = []
    remote = predict_job(
        source,
        images,
        tmp_path / "ray",
        JobOptions("ray", batch_size=8),
        progress=lambda d, t: done.append((d, t)),
    )
    assert local.scored == remote.scored == N and local.errors == remote.errors == 1
    assert done[-1] == (N + 1, N + 1)
    ours, theirs = files(tmp_path / "local"), files(tmp_path / "ray")
    assert len(ours) == 2 * N + 2  # masks, overlays, summary.csv, errors.csv
    assert ours.keys() == theirs.keys()
    assert [name for name in ours if ours[name] != theirs[name]] == []
    errors = (tmp_path / "local" / "errors.csv").read_text().splitlines()
    assert errors[0] == "image,error" and errors[1].startswith("broken.png,")
    assert len(errors) == 2 and "PNG" in errors[1]
    assert sum(local.class_fractions.values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_a_rerun_resumes_and_overwrite_redoes(source, images, tmp_path):
    out = tmp_path / "out"
    first = predict_job(source, images, out, JobOptions(overlays=False))
    summary = (out / "summary.csv").read_bytes()
    assert first.scored == N and not list(out.glob("*_overlay.png"))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left
    for name in ("img003", "img100"):
        (out / f"{name}_mask.png").unlink()
    kept = (out / "img004_mask.png").stat().st_mtime_ns
    again = predict_job(source, images, out, JobOptions(overlays=False))
    assert (again.scored, again.skipped, again.errors) == (2, N - 2, 1)
    assert (out / "img004_mask.png").stat().st_mtime_ns == kept
    assert (out / "summary.csv").read_bytes() == summary  # skipped rows read back from masks
    redo = predict_job(source, images, out, JobOptions(overlays=False, overwrite=True))
    assert (redo.scored, redo.skipped) == (N, 0)


def test_bad_input_is_refused_in_seconds(tmp_path):
    start = time.monotonic()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        check_source_folder(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no such file or folder"):
        check_source_folder(tmp_path / "missing")
    port = free_port()  # a port nobody listens on
    with pytest.raises(EngineError, match=f"127.0.0.1:{port}.*ray start --head"):
        check_ray_address(f"127.0.0.1:{port}", timeout=2)
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    options = JobOptions("ray", address=f"ray://127.0.0.1:{port}")
    with pytest.raises(EngineError, match="does not answer"):  # before the model is loaded
        predict_job(
            {"checkpoint": str(tmp_path / "none.pt")}, tmp_path / "in", tmp_path / "o", options
        )
    assert not (tmp_path / "o").exists()
    assert time.monotonic() - start < 10


def test_the_command_refuses_an_empty_folder_before_loading_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "segops.cli.main", "predict", "empty", "out", "--engine", "ray"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "no images" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_bar_rate_counts_from_when_scoring_starts(source, tmp_path, monkeypatch):
    """`segops predict`'s images/s is the rate of scoring: the bar's task (whose elapsed time
    the figure divides by) starts once the model is loaded, not when the bar appears."""
    import rich.progress
    from typer.testing import CliRunner

    from segops.cli.main import app
    from segops.scoring import job

    events: list[str] = []
    rates: list[str] = []
    load, start = job.load_source, rich.progress.Progress.start_task
    update = rich.progress.Progress.update

    def loading(*args, **kwargs):
        events.append("model loaded")
        return load(*args, **kwargs)

    def starting(self, task_id):
        events.append("bar started")
        return start(self, task_id)

    def updating(self, task_id, **fields):
        rates.append(fields.get("rate", ""))
        return update(self, task_id, **fields)

    monkeypatch.setattr(job, "load_source", loading)
    monkeypatch.setattr(rich.progress.Progress, "start_task", starting)
    monkeypatch.setattr(rich.progress.Progress, "update", updating)
    monkeypatch.chdir(tmp_path)
    scoring_images(tmp_path, 6, 3)
    args = ["predict", ".", "out", "--checkpoint", source["checkpoint"], "--batch-size", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert events == ["model loaded", "bar started"]
    assert rates[-1].endswith(" images/s") and float(rates[-1].split()[0]) > 0
