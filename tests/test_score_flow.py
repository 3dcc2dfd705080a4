"""The `score` flow end to end: champion pinned, input scored, run recorded, history shows it."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from segops.promotion.registry import RegistryError

NAME = "score-test"


@pytest.fixture
def registered(shapes_root, tmp_path, own_mlflow):
    """Two tiny versions of `score-test` (v1 champion) in this test's MLflow store, a folder
    of 12 images (one unreadable) and the config the steps take."""
    from segops.promotion.registry import record_decision, register
    from segops.serving.logging import log_pyfunc
    from segops.train.loop import train

    result = train(tiny_config(shapes_root, tmp_path / "run", "train.epochs=1"))
    client = mlflow.MlflowClient()
    exp = client.create_experiment("models", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    logged = log_pyfunc(run_id, result.best_checkpoint)  # logged once, registered twice
    refs = [register(logged, NAME, run_id, key, {}) for key in ("k1", "k2")]
    record_decision(refs[0], {}, True, "first")
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(11):
        image = rng.integers(0, 256, (32, 32 + i, 3), dtype=np.uint8)
        Image.fromarray(image).save(src / f"s{i:02d}.png")
    (src / "zz_broken.png").write_bytes(b"not an image")
    overrides = [f"tracking.artifact_root={tmp_path / 'art'}", "predict.batch_size=4"]
    return {"refs": refs, "src": src, "out": tmp_path / "out", "overrides": overrides}


@pytest.mark.slow
def test_score_flow_records_which_version_scored_which_data(registered, harness):
    from flows.score import score
    from segops.config import load_config
    from segops.lineage.history import model_history
    from segops.promotion.registry import record_decision
    from segops.scoring import steps
    from segops.scoring.records import Pinned
    from segops.tracking.scoring import SCORE_TAGS

    src, out = str(registered["src"]), str(registered["out"])
    result = score(src, out, NAME, params=None, overrides=registered["overrides"])
    assert result["model"]["version"] == "1" and result["model"]["champion"]
    assert result["summary"]["scored"] == 11 and result["summary"]["errors"] == 1
    run = mlflow.MlflowClient().get_run(result["run_id"])
    tags, metrics = run.data.tags, run.data.metrics
    assert tags[SCORE_TAGS["model_uri"]] == f"models:/{NAME}/1"
    assert tags[SCORE_TAGS["champion"]] == "true" and tags[SCORE_TAGS["flow_run_id"]] != "none"
    assert tags[SCORE_TAGS["input_hash"]] == steps.input_identity(src).hash
    assert metrics["scored"] == 11 and metrics["errors"] == 1 and metrics["images_per_s"] > 0
    assert sum(v for k, v in metrics.items() if k.startswith("frac_")) == pytest.approx(1, 1e-3)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "scoring")}
    assert artifacts == {"scoring/summary.csv", "scoring/errors.csv"}
    assert run.inputs.model_inputs  # linked to the version's logged model

    # v2 becomes champion; scoring again with v1 is allowed and recorded as not champion.
    record_decision(registered["refs"][1], {}, True, "second")
    config = load_config(None, registered["overrides"])
    pinned = steps.pin_step(config, f"models:/{NAME}/1")
    assert isinstance(pinned, Pinned) and pinned.requested == f"models:/{NAME}/1"
    assert not pinned.champion and pinned.champion_version == "2" and "(v2 is)" in pinned.warning()
    summary = steps.score_step(config, pinned, src, out + "2")
    assert (summary.engine, summary.predicted.scored, summary.predicted.skipped) == ("local", 11, 0)
    old_run = steps.record_step(config, pinned, steps.input_identity(src), summary)
    scored = [e for e in model_history(NAME) if e["event"] == "scored"]
    assert [e["version"] for e in scored] == ["1", "1"]
    assert scored[1]["data"] == tags[SCORE_TAGS["input_hash"]]
    assert "not champion (v2 was)" in scored[1]["detail"] and old_run in scored[1]["detail"]

    # A name with no champion stops the flow before anything is scored.
    with pytest.raises(RegistryError, match=r"nobody@champion: not in the registry"):
        score(src, out + "3", "nobody", params=None, overrides=registered["overrides"])
    assert not (registered["out"].parent / "out3").exists()
