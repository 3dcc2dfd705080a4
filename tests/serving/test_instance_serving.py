"""The served pyfunc model of an instance model (Mask R-CNN): detection columns, the
`score_threshold` param, bad payloads (400) and a real `mlflow models serve`."""

from __future__ import annotations

import base64
import json
import signal
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config
from mlflow.exceptions import MlflowException
from PIL import Image
from test_serving import BAD, encoded, post, served
from train.test_instance_train import CLASSES, TinyInstances, _config

from segops.serving.pyfunc import (
    INSTANCE_LISTS,
    decode_png,
    kept_detections,
    score_threshold_param,
    signature,
    write_model_files,
)

NAME = "instance-serving-test"
PIXELS = [f"pixels_{c}" for c in CLASSES]
COLUMNS = ["mask", *PIXELS, "instances", *INSTANCE_LISTS]
# After one epoch every score is far below 0.5 (and below torchvision's 0.05 cut): keep them
# all, at most 20 an image, so `score_threshold=0` returns detections to check.
OPTIONS = (
    "model.options={min_size: 64, max_size: 64, trainable_backbone_layers: 0, "
    "box_score_thresh: 0.0, box_detections_per_img: 20}"
)


def scene(seed: int, height: int, width: int) -> np.ndarray:
    """A TinyInstances image (squares/discs on noise) as HxWx3 uint8, resized to HxW."""
    image = TinyInstances(1, seed=seed)[0][0]
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return np.array(Image.fromarray(array).resize((width, height), Image.BILINEAR))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Mask R-CNN trained 1 epoch, registered as `instance-serving-test@champion`."""
    from segops.promotion.registry import record_decision, register
    from segops.serving.logging import log_pyfunc
    from segops.train.instance import train_instance

    tmp = tmp_path_factory.mktemp("instance-serving")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)  # MLflow caches the URI of earlier tests process-wide
        cfg = _config(tmp / "unused", tmp / "run", "train.epochs=1", OPTIONS)
        data, val = TinyInstances(4), TinyInstances(1, seed=1)
        result = train_instance(cfg, data, val, classes=CLASSES, dataset_hash="test")
        client = mlflow.MlflowClient()
        exp = client.create_experiment("serving", artifact_location=(tmp / "art").as_uri())
        run_id = client.create_run(exp).info.run_id
        ref = register(log_pyfunc(run_id, result.best_checkpoint), NAME, run_id, "k1", {})
        record_decision(ref, {}, True, "test")
        yield {"uri": uri, "model": f"models:/{NAME}@champion", "experiment": exp}
        mlflow.set_tracking_uri(None)  # also unsets the env var: before the context restores it


@pytest.fixture(scope="module")
def model(store):
    return mlflow.pyfunc.load_model(store["model"])


def check_row(row: dict, height: int, width: int, threshold: float) -> None:
    """One output row: class map and instance masks at HxW, lists aligned and sorted."""
    painted = decode_png(row["mask"])
    assert painted.shape == (height, width)
    assert sum(row[c] for c in PIXELS) == height * width
    count = row["instances"]
    assert all(len(row[c]) == count for c in INSTANCE_LISTS)
    assert set(row["classes"]) <= set(CLASSES[1:])
    assert [CLASSES[k] for k in row["labels"]] == row["classes"]
    assert row["scores"] == sorted(row["scores"], reverse=True)
    assert all(threshold <= s <= 1 for s in row["scores"])
    union = np.zeros((height, width), bool)
    for text, (x0, y0, x1, y1) in zip(row["masks"], row["boxes"], strict=True):
        mask = decode_png(text)
        assert mask.shape == (height, width) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
        union |= mask > 0
    assert np.array_equal(painted > 0, union)  # the class map is painted from the kept masks


def check(out: pd.DataFrame, sizes: list[tuple[int, int]], threshold: float = 0.5) -> None:
    assert list(out.columns) == COLUMNS and len(out) == len(sizes)
    for (height, width), row in zip(sizes, out.to_dict("records"), strict=True):
        check_row(row, height, width, threshold)


# --- cheap: no model ---------------------------------------------------------------------------


def test_signatures_of_both_kinds():
    semantic = signature(CLASSES)
    assert semantic.outputs.input_names() == ["mask", *PIXELS] and semantic.params is None
    instance = signature(CLASSES, "instance")
    assert instance.outputs.input_names() == COLUMNS
    assert instance.inputs.input_names() == semantic.inputs.input_names() == ["image", "array"]
    (param,) = instance.params.params
    assert (param.name, param.default) == ("score_threshold", 0.5)


def test_score_threshold_param():
    assert score_threshold_param(None) == score_threshold_param({}) == 0.5
    assert score_threshold_param({"score_threshold": 0}) == 0.0
    assert score_threshold_param({"score_threshold": 0.25}) == 0.25
    for bad in (-0.1, 1.5, "lots", float("nan"), True):
        with pytest.raises(MlflowException, match="score_threshold") as info:
            score_threshold_param({"score_threshold": bad})
        assert info.value.error_code == "INVALID_PARAMETER_VALUE"


def test_kept_detections_sorts_and_filters():
    found = {
        "scores": np.array([0.25, 0.75, 0.5], np.float32),
        "labels": np.array([1, 2, 1]),
        "boxes": np.arange(12, dtype=np.float32).reshape(3, 4),
        "masks": np.zeros((3, 4, 4), bool),
    }
    kept = kept_detections(found, 0.5)
    assert kept["scores"].tolist() == [0.75, 0.5] and kept["labels"].tolist() == [2, 1]
    assert kept["boxes"][0].tolist() == [4, 5, 6, 7] and kept["masks"].shape == (2, 4, 4)
    assert len(kept_detections(found, 0.8)["labels"]) == 0


def test_model_json_records_the_kind(tmp_path):
    ckpt = {"model": {}, "config": {}, "classes": CLASSES, "model_name": "unet"}
    ckpt |= {"dataset_hash": "d", "config_hash": "c"}
    paths = write_model_files(ckpt, tmp_path / "semantic")
    assert json.loads(Path(paths["meta"]).read_text())["kind"] == "semantic"
    paths = write_model_files({**ckpt, "kind": "instance"}, tmp_path / "instance")
    assert json.loads(Path(paths["meta"]).read_text())["kind"] == "instance"


# --- a trained Mask R-CNN, in process ----------------------------------------------------------

ROWS = [{"image": encoded(scene(5, 48, 40))}, {"array": scene(6, 64, 80).tolist()}]
SIZES = [(48, 40), (64, 80)]


@pytest.mark.slow
def test_png_and_array_rows_give_every_column(model):
    assert model.unwrap_python_model().kind == "instance"
    default = model.predict(pd.DataFrame(ROWS))
    check(default, SIZES)
    everything = model.predict(pd.DataFrame(ROWS), params={"score_threshold": 0.0})
    check(everything, SIZES, 0.0)
    assert (everything["instances"] >= default["instances"]).all()
    assert everything["instances"].sum() > 0  # the checks above saw some detections
    # A threshold between two scores keeps exactly the detections at or above it.
    scores = everything["scores"][0]
    if len(scores) > 1:
        middle = float(np.median(scores))
        some = model.predict(pd.DataFrame(ROWS[:1]), params={"score_threshold": middle})
        check(some, SIZES[:1], middle)
        assert some["instances"][0] == sum(s >= middle for s in scores)


@pytest.mark.slow
def test_a_bad_score_threshold_is_refused(model):
    for bad in (1.5, "lots"):
        with pytest.raises(MlflowException) as info:
            model.predict(pd.DataFrame(ROWS[:1]), params={"score_threshold": bad})
        assert info.value.error_code == "INVALID_PARAMETER_VALUE"
        assert "score_threshold" in info.value.message


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_bad_rows_are_refused_as_for_semantic_models(model, case):
    row, message = BAD[case]
    with pytest.raises(MlflowException) as info:
        model.predict(pd.DataFrame([ROWS[0], row]))
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "row 1:" in info.value.message and message in info.value.message


@pytest.mark.slow
def test_a_semantic_model_keeps_its_columns(store, shapes_root, tmp_path):
    from segops.serving.logging import log_pyfunc
    from segops.train.checkpoint import load_checkpoint
    from segops.train.loop import train

    result = train(tiny_config(shapes_root, tmp_path / "run", "train.epochs=1"))
    classes = load_checkpoint(result.best_checkpoint)["classes"]
    run_id = mlflow.MlflowClient().create_run(store["experiment"]).info.run_id
    semantic = mlflow.pyfunc.load_model(log_pyfunc(run_id, result.best_checkpoint))
    assert semantic.unwrap_python_model().kind == "semantic"
    assert semantic.metadata.signature.params is None
    out = semantic.predict(pd.DataFrame(ROWS))
    assert list(out.columns) == ["mask"] + [f"pixels_{c}" for c in classes]


# --- a real server on loopback -----------------------------------------------------------------


def good_request(url: str) -> None:
    image = scene(7, 40, 56)
    status, body = post(url, {"dataframe_records": [{"image": encoded(image)}]})
    assert status == 200, body
    check(pd.DataFrame(body["predictions"]), [(40, 56)])
    records = [{"image": encoded(image)}, {"array": image.tolist()}]
    payload = {"dataframe_records": records, "params": {"score_threshold": 0.0}}
    status, body = post(url, payload)
    assert status == 200, body
    check(pd.DataFrame(body["predictions"]), [(40, 56), (40, 56)], 0.0)


@pytest.mark.slow
def test_mlflow_models_serve_answers_and_survives_bad_payloads(store, tmp_path):
    with served(store, tmp_path / "server.log") as (base, proc):
        url = base + "/invocations"
        good_request(url)
        not_image = {"image": base64.b64encode(b"not an image").decode()}
        status, body = post(url, {"dataframe_records": [ROWS[0], not_image]})
        assert status == 400, body
        assert body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "row 1: " in body["message"] and "not a readable image" in body["message"]
        payload = {"dataframe_records": ROWS[:1], "params": {"score_threshold": 2.0}}
        status, body = post(url, payload)
        assert status == 400 and "score_threshold" in body["message"], body
        good_request(url)  # still serving
        assert proc.poll() is None
    # It was serving until stopped, and SIGTERM ended it (-9 would mean it needed SIGKILL).
    assert proc.returncode == -signal.SIGTERM, proc.returncode
