"""The `score` flow end to end, on a folder and on `s3://` prefixes (the conftest's `s3` server):
champion pinned, input scored, run recorded, history shows it, a rerun resumes."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image
from servers import free_port

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


@pytest.mark.slow
def test_score_flow_from_and_to_s3_prefixes_records_and_resumes(
    registered, harness, fs, tmp_path, monkeypatch
):
    """The real flow on the conftest's S3 server: s3:// in, masks and summary s3:// out."""
    from typer.testing import CliRunner

    from flows.score import score
    from segops.cli.main import app
    from segops.errors import DatasetError
    from segops.lineage.history import model_history
    from segops.scoring import steps
    from segops.scoring.checks import EngineError
    from segops.tracking.scoring import SCORE_TAGS

    for path in sorted(registered["src"].iterdir()):
        fs.put_file(str(path), f"scoring/flow-in/{path.name}")
    fs.pipe_file("scoring/flow-in/readme.txt", b"not an image: not scored, not hashed")
    src, out, overrides = "s3://scoring/flow-in/", "s3://scoring/flow-out", registered["overrides"]
    identity = steps.input_identity(src)
    assert (identity.input, identity.kind, identity.images) == (src[:-1], "s3-listing", 12)

    first = score(src, out, NAME, params=None, overrides=overrides)
    assert first["input"] == identity.to_dict()
    assert first["model"]["model_uri"] == f"models:/{NAME}/1" and first["model"]["champion"]
    assert [first["summary"][k] for k in ("scored", "skipped", "errors")] == [11, 0, 1]
    written = {Path(k).name: fs.cat_file(k) for k in fs.find("scoring/flow-out")}
    stems = [f"s{i:02d}" for i in range(11)]
    expected = {f"{s}_{kind}.png" for s in stems for kind in ("mask", "overlay")}
    assert written.keys() == expected | {"summary.csv", "errors.csv"}  # no temp object left
    assert b"zz_broken.png," in written["errors.csv"]
    assert written["summary.csv"].decode().count("\n") == 12  # header + one row per image

    client = mlflow.MlflowClient()
    run = client.get_run(first["run_id"])
    tags, metrics = run.data.tags, run.data.metrics
    assert tags[SCORE_TAGS["input"]] == "s3://scoring/flow-in"
    assert tags[SCORE_TAGS["input_kind"]] == "s3-listing"
    assert tags[SCORE_TAGS["input_hash"]] == identity.hash
    assert tags[SCORE_TAGS["out"]] == out and tags[SCORE_TAGS["engine"]] == "local"
    assert tags[SCORE_TAGS["model_uri"]] == f"models:/{NAME}/1"
    assert tags[SCORE_TAGS["model_version"]] == "1" and tags[SCORE_TAGS["champion"]] == "true"
    assert tags[SCORE_TAGS["flow_run_id"]] not in ("", "none")
    counts = {k: metrics[k] for k in ("images", "scored", "skipped", "errors")}
    assert counts == {"images": 12, "scored": 11, "skipped": 0, "errors": 1}
    assert metrics["images_per_s"] > 0 and metrics["seconds"] > 0
    assert run.inputs.model_inputs  # linked to the version's logged model
    logged = client.download_artifacts(run.info.run_id, "scoring/summary.csv", str(tmp_path))
    assert Path(logged).read_bytes() == written["summary.csv"]

    # A rerun resumes: only the image whose mask was deleted is scored again, same bytes.
    fs.rm("scoring/flow-out/s04_mask.png")
    second = score(src, out, NAME, params=None, overrides=overrides)
    assert [second["summary"][k] for k in ("scored", "skipped", "errors")] == [1, 10, 1]
    fs.invalidate_cache()
    assert {Path(k).name: fs.cat_file(k) for k in fs.find("scoring/flow-out")} == written
    assert client.get_run(second["run_id"]).data.metrics["skipped"] == 10

    # `segops models history` shows which version scored which data, with both runs.
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the defaults, as the flow had them
    sets = [arg for o in overrides for arg in ("--set", o)]
    shown = CliRunner().invoke(app, ["models", "history", NAME, "--json", *sets])
    assert shown.exit_code == 0, shown.output
    events = [json.loads(line) for line in shown.output.splitlines()]
    scored = [e for e in events if e["event"] == "scored"]
    assert [(e["version"], e["data"], e["data_kind"]) for e in scored] == [
        ("1", identity.hash, "s3-listing")
    ] * 2
    assert [e["flow_run"] for e in scored] == [
        client.get_run(r["run_id"]).data.tags[SCORE_TAGS["flow_run_id"]] for r in (first, second)
    ]
    assert "11 images of s3://scoring/flow-in" in scored[0]["detail"]
    assert "1 images of s3://scoring/flow-in" in scored[1]["detail"]

    # An empty prefix stops the flow before any work: nothing written, no run recorded.
    with pytest.raises(DatasetError, match="s3://scoring/nothing: no images"):
        score("s3://scoring/nothing", "s3://scoring/none", NAME, params=None, overrides=overrides)
    assert not fs.find("scoring/none")
    # So does an unreachable Ray address (in seconds, before the model is loaded).
    with pytest.raises(EngineError, match="does not answer"):
        score(src, "s3://scoring/none", NAME, "ray", f"127.0.0.1:{free_port()}", None, overrides)
    assert not fs.find("scoring/none")
    assert len([e for e in model_history(NAME) if e["event"] == "scored"]) == 2


def test_the_flow_refuses_a_bad_engine_or_ray_address_before_pinning(tmp_path, own_mlflow, harness):
    """Engine and Ray address are checked first thing, with the input: asked for a model with
    no champion, the flow fails on the engine, not on the registry (the pin never ran); no
    output, no MLflow run."""
    from flows.score import score
    from segops.errors import ConfigError
    from segops.scoring.checks import EngineError

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "a.png")
    with pytest.raises(ConfigError, match="engine 'spark': give one of local, ray"):
        score(str(src), str(out), "nobody", "spark", params=None)
    with pytest.raises(EngineError, match=r"Ray cluster at 127.0.0.1:\d+ does not answer"):
        score(str(src), str(out), "nobody", "ray", f"127.0.0.1:{free_port()}", params=None)
    with pytest.raises(RegistryError, match="nobody@champion"):  # good engine: the pin says
        score(str(src), str(out), "nobody", "ray", None, params=None)
    assert not out.exists()
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")
