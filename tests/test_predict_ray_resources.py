"""The ray engine's resources: one GPU per actor where the cluster has GPUs (whatever the
driver has), a dashboard Ray cannot start refused before any work, and `segops predict`'s
progress bar with images/s on both engines."""

from __future__ import annotations

import re
import urllib.request

import numpy as np
import pytest
from conftest import scoring_images, tiny_config
from PIL import Image

from segops.scoring.checks import EngineError
from segops.scoring.job import JobOptions, predict_job
from segops.scoring.ray_engine import actor_pool, ray_session


def test_actors_take_one_gpu_each_where_the_cluster_has_gpus():
    assert actor_pool({"CPU": 2.0}, 10) == (2, 0)
    assert actor_pool({"CPU": 16.0, "GPU": 2.0}, 10) == (2, 1)  # one actor per GPU
    assert actor_pool({"CPU": 16.0, "GPU": 0.0}, 10) == (10, 0)  # at most one per chunk
    assert actor_pool({"CPU": 16.0, "GPU": 4.0}, 3) == (3, 1)
    assert actor_pool({"CPU": 16.0, "GPU": 4.0}, 10, actors=1) == (1, 1)
    assert actor_pool({}, 5) == (1, 0)


def test_a_dashboard_is_refused_before_work_or_started_and_its_address_given(tmp_path):
    from ray._private.utils import get_dashboard_dependency_error

    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    if missing := get_dashboard_dependency_error():  # ray[data] without ray[default]
        with pytest.raises(EngineError, match=r"pip install 'ray\[default\]'"):
            predict_job(  # a model that does not exist: refused before it is loaded
                {"checkpoint": str(tmp_path / "none.pt")},
                tmp_path / "in",
                tmp_path / "out",
                JobOptions("ray", dashboard=True),
            )
        assert str(missing) and not (tmp_path / "out").exists()
        return
    with ray_session(None, 1, dashboard=True) as url:
        assert url and urllib.request.urlopen(f"http://{url}", timeout=10).status == 200


@pytest.mark.slow
def test_both_engines_show_images_per_s_and_gpu_actors_write_the_same_bytes(
    shapes_root, tmp_path, monkeypatch
):
    """`segops predict` on both engines, the ray one on a local cluster declaring one GPU
    (none here: the actor finds no CUDA and scores on the CPU): the actor is scheduled with
    it and writes what the local engine writes; both show a bar with images/s."""
    import ray
    from typer.testing import CliRunner

    from segops.cli.main import app
    from segops.cli.progress import console
    from segops.train.loop import train

    monkeypatch.setattr(console, "_width", 240)  # not a terminal: 80 columns cut the bar's rate

    checkpoint = train(tiny_config(shapes_root, tmp_path / "run", "train.epochs=1")).best_checkpoint
    (tmp_path / "images").mkdir()
    images = scoring_images(tmp_path / "images", 12, 5)
    common = ["--checkpoint", str(checkpoint), "--batch-size", "4"]
    shown = {}
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        assert actor_pool(ray.cluster_resources(), 3) == (1, 1)
        for engine in ("local", "ray"):  # ray: the cluster above (an initialised Ray is used)
            args = ["predict", str(images), str(tmp_path / engine), "--engine", engine]
            result = CliRunner().invoke(app, args + common)
            assert result.exit_code == 0, result.output
            shown[engine] = result.output
    finally:
        ray.shutdown()
    for engine, output in shown.items():
        assert f"predicting ({engine})" in output and "13/13" in output  # broken.png too
        bar = output.split("12 images predicted")[0]  # the bar, before the closing line
        assert re.search(r"\d+\.\d images/s", bar), output
        assert "12 images predicted" in output and "1 unreadable" in output
    ours = {p.name: p.read_bytes() for p in (tmp_path / "local").iterdir()}
    theirs = {p.name: p.read_bytes() for p in (tmp_path / "ray").iterdir()}
    assert len(ours) == 2 * 12 + 2 and ours == theirs
