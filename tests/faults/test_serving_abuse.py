"""Hostile requests to the served pyfunc, in process: every one is refused or stopped, fast,
with a message that says which limit and how to set it (issue 12, item 2)."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import zlib

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.scoring_server import invocations
from PIL import Image

MAX_PIXELS_ENV = "SEGOPS_SERVE_MAX_PIXELS"
MAX_SECONDS_ENV = "SEGOPS_SERVE_MAX_SECONDS"
MAX_CONCURRENT_ENV = "SEGOPS_SERVE_MAX_CONCURRENT"
QUEUE_SECONDS_ENV = "SEGOPS_SERVE_QUEUE_SECONDS"
LIMIT_ENVS = (MAX_PIXELS_ENV, MAX_SECONDS_ENV, MAX_CONCURRENT_ENV, QUEUE_SECONDS_ENV)


def png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def png_header(width: int, height: int) -> str:
    """A PNG whose header claims `width` x `height` RGB pixels and that holds none."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
    return base64.b64encode(data + chunk(b"IEND", b"")).decode()


@pytest.fixture(scope="module")
def model_uri(shapes_root, tmp_path_factory):
    """A tiny trained U-Net (32-pixel windows) logged as a pyfunc in its own MLflow store."""
    from segops.serving.logging import log_pyfunc
    from segops.train.loop import train

    tmp = tmp_path_factory.mktemp("abuse")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        result = train(tiny_config(shapes_root, tmp / "run"))
        client = mlflow.MlflowClient()
        exp = client.create_experiment("abuse", artifact_location=(tmp / "art").as_uri())
        yield log_pyfunc(client.create_run(exp).info.run_id, result.best_checkpoint)
        mlflow.set_tracking_uri(None)  # also unsets the env var: before the context restores it


def load(model_uri: str, monkeypatch, **env: str):
    """The pyfunc loaded with these limits (read at load time) and no others."""
    for name in (*LIMIT_ENVS, "SEGOPS_SERVE_MAX_TILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return mlflow.pyfunc.load_model(model_uri)


@pytest.fixture(scope="module")
def model(model_uri):
    with pytest.MonkeyPatch.context() as mp:
        yield load(model_uri, mp)


def refused(model, frame: pd.DataFrame, code: str = "INVALID_PARAMETER_VALUE") -> str:
    with pytest.raises(MlflowException) as info:
        model.predict(frame)
    assert info.value.error_code == code, info.value.message
    return info.value.message


def no_decoding(monkeypatch) -> None:
    def decode(data):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr("segops.data.io.image_from_bytes", decode)


def test_oversized_png_headers_are_refused_before_decoding(model_uri, model, monkeypatch):
    no_decoding(monkeypatch)
    start = time.monotonic()
    for width, height in [(5000, 5000), (60000, 60000)]:  # claims only: no pixel data
        message = refused(model, pd.DataFrame({"image": [png_header(width, height)]}))
        assert message.startswith("row 0:") and MAX_PIXELS_ENV in message
    # A real 1x20000 PNG: 20000 pixels, but 32-pixel windows cover 32 x 20000 of them.
    small = load(model_uri, monkeypatch, **{MAX_PIXELS_ENV: "100000"})
    thin = png(np.zeros((20000, 1, 3), np.uint8))
    message = refused(small, pd.DataFrame({"image": [thin]}))
    assert "1x20000" in message and "limit 100000" in message and MAX_PIXELS_ENV in message
    assert time.monotonic() - start < 10


def test_a_huge_array_row_is_refused_before_it_is_converted(model, monkeypatch):
    monkeypatch.setattr("segops.inference.predict_image", lambda *a: pytest.fail("predicted"))
    start = time.monotonic()
    wide = [[0] * 1_000_000]  # 1x1,000,000: padded to 32 x 1,000,000 by the sliding window
    message = refused(model, pd.DataFrame({"array": [wide]}))
    assert message.startswith("row 0:") and "1000000x1" in message and MAX_PIXELS_ENV in message
    deep = [[[[0, 0]]]]  # HxWxCx2: refused from its nesting, whatever its size
    assert "HxW or HxWxC" in refused(model, pd.DataFrame({"array": [deep]}))
    assert time.monotonic() - start < 10


def test_unknown_fields_are_refused_naming_the_expected_ones(model):
    # MLflow's schema drops the unknown field before the model sees it: nothing is left.
    message = refused(model, pd.DataFrame({"img": [png(np.zeros((4, 4, 3), np.uint8))]}))
    assert "'image'" in message and "'array'" in message
    schema = model.metadata.get_input_schema()
    body = json.dumps({"dataframe_records": [{"img": "aGVsbG8="}]})
    with pytest.raises(MlflowException) as info:  # the server answers with its status
        invocations(body, "application/json", model, schema)
    assert info.value.get_http_status_code() == 400 and "'image'" in info.value.message
    # Called directly (no schema in between), the unknown field itself is named.
    raw = model.unwrap_python_model()
    frame = pd.DataFrame({"image": [png(np.zeros((4, 4, 3), np.uint8))], "img": ["x"]})
    with pytest.raises(MlflowException, match=r"unknown field\(s\) \['img'\].*'image'"):
        raw.predict(None, frame)


def test_a_null_image_is_absent_not_a_second_input(model):
    schema = model.metadata.get_input_schema()

    def post(payload: dict):
        return invocations(json.dumps(payload), "application/json", model, schema)

    for payload in ({"inputs": {"image": None}}, {"inputs": [{"image": None}]}):
        with pytest.raises(MlflowException, match="both missing or null") as info:
            post(payload)
        assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    both = post({"inputs": {"image": [None], "array": [[[0, 255], [7, 9]]]}})
    assert both.status == 200, both.response
    assert len(json.loads(both.response)["predictions"]) == 1


def test_the_time_budget_stops_the_work(model_uri, monkeypatch):
    # windows of the input size: many forwards to stop between (a 400 px image fits one
    # whole-image tile, one forward, which a budget checked between forwards cannot cut)
    timed = load(model_uri, monkeypatch, **{MAX_SECONDS_ENV: "0.05", "SEGOPS_SERVE_MAX_TILE": "0"})
    forwards = []
    timed.unwrap_python_model().trained.model.register_forward_hook(
        lambda *args: forwards.append(1)
    )
    image = png(np.random.default_rng(0).integers(0, 256, (400, 400, 3), np.uint8))
    start = time.monotonic()
    message = refused(timed, pd.DataFrame({"image": [image]}), "DEADLINE_EXCEEDED")
    assert "0.05 s" in message and MAX_SECONDS_ENV in message
    assert time.monotonic() - start < 5
    assert len(forwards) < 72  # 24 x 24 windows in batches of 8: stopped well before the end


def test_concurrent_predictions_are_bounded(model_uri, monkeypatch):
    import segops.inference

    bounded = load(model_uri, monkeypatch, **{MAX_CONCURRENT_ENV: "1", QUEUE_SECONDS_ENV: "0.3"})
    real, entered, release = segops.inference.predict_image, threading.Event(), threading.Event()

    def slow(*args, **kwargs):
        if not entered.is_set():  # only the first prediction holds its slot
            entered.set()
            release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(segops.inference, "predict_image", slow)
    frame = pd.DataFrame({"image": [png(np.zeros((8, 8, 3), np.uint8))]})
    results = []
    first = threading.Thread(target=lambda: results.append(bounded.predict(frame)))
    first.start()
    try:
        assert entered.wait(30)
        start = time.monotonic()
        message = refused(bounded, frame, "TEMPORARILY_UNAVAILABLE")
        assert 0.2 < time.monotonic() - start < 5
        assert MAX_CONCURRENT_ENV in message and "retry" in message
    finally:
        release.set()
        first.join(60)
    assert len(results) == 1 and len(results[0]) == 1
    assert len(bounded.predict(frame)) == 1  # the slot was given back


def test_segops_serve_gives_the_model_a_budget_under_the_server_timeout(monkeypatch):
    from segops.cli.serve import serve_env

    monkeypatch.delenv(MAX_SECONDS_ENV, raising=False)
    assert float(serve_env("sqlite:///x.db", None, 60)[MAX_SECONDS_ENV]) < 60
    monkeypatch.setenv(MAX_SECONDS_ENV, "12")
    assert serve_env("sqlite:///x.db", None, 60)[MAX_SECONDS_ENV] == "12"
