"""The served pyfunc model: payloads, bad payloads (400), and a real `mlflow models serve`."""

from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config
from mlflow.exceptions import MlflowException
from PIL import Image
from servers import BIN, bin_on_path, free_port, running

from segops.serving.pyfunc import MAX_PIXELS_ENV, decode_png, max_pixels_setting

NAME = "serving-test"
RNG = np.random.default_rng(0)


def rgb(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def encoded(array: np.ndarray, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def store(shapes_root, tmp_path_factory):
    """A tiny trained model registered as `serving-test@champion` in its own MLflow store."""
    from segops.promotion.registry import record_decision, register
    from segops.serving.logging import log_pyfunc
    from segops.train.loop import train

    tmp = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)  # MLflow caches the URI of earlier tests process-wide
        result = train(tiny_config(shapes_root, tmp / "run"))
        client = mlflow.MlflowClient()
        exp = client.create_experiment("serving", artifact_location=(tmp / "art").as_uri())
        run_id = client.create_run(exp).info.run_id
        ref = register(log_pyfunc(run_id, result.best_checkpoint), NAME, run_id, "k1", {})
        record_decision(ref, {}, True, "test")
        yield {"uri": uri, "model": f"models:/{NAME}@champion"}
        mlflow.set_tracking_uri(None)  # also unsets the env var: before the context restores it


@pytest.fixture(scope="module")
def model(store):
    return mlflow.pyfunc.load_model(store["model"])


def check(out: pd.DataFrame, sizes: list[tuple[int, int]]) -> None:
    """Masks decode at the given (H, W) sizes and each row's pixel counts sum to H*W."""
    assert len(out) == len(sizes)
    counts = out[[c for c in out.columns if c.startswith("pixels_")]]
    for (h, w), text, total in zip(sizes, out["mask"], counts.sum(axis=1), strict=True):
        assert decode_png(text).shape == (h, w)
        assert total == h * w


def test_batch_of_one_and_three_images_of_different_sizes(model):
    check(model.predict(pd.DataFrame({"image": [encoded(rgb(20, 30))]})), [(20, 30)])
    images = [encoded(rgb(20, 30)), encoded(rgb(17, 11), "JPEG"), encoded(rgb(64, 48))]
    check(model.predict(pd.DataFrame({"image": images})), [(20, 30), (17, 11), (64, 48)])


def test_grayscale_and_rgba_images_become_rgb(model):
    gray = RNG.integers(0, 256, (9, 13), dtype=np.uint8)
    rgba = RNG.integers(0, 256, (12, 10, 4), dtype=np.uint8)
    out = model.predict(pd.DataFrame({"image": [encoded(gray), encoded(rgba)]}))
    check(out, [(9, 13), (12, 10)])


def test_raw_arrays_of_every_accepted_layout(model):
    arrays = [
        rgb(15, 25).tolist(),
        RNG.integers(0, 256, (8, 6)).tolist(),  # grayscale HxW
        RNG.integers(0, 256, (8, 6, 1)).tolist(),
        RNG.integers(0, 256, (7, 5, 4)).tolist(),  # RGBA
    ]
    out = model.predict(pd.DataFrame({"array": arrays}))
    check(out, [(15, 25), (8, 6), (8, 6), (7, 5)])


def test_a_raw_array_predicts_like_the_same_png(model):
    image = rgb(21, 19)
    by_png = model.predict(pd.DataFrame({"image": [encoded(image)]}))
    by_array = model.predict(pd.DataFrame({"array": [image.tolist()]}))
    assert by_png.equals(by_array)


TRUNCATED = base64.b64encode(base64.b64decode(encoded(rgb(30, 30)))[:60]).decode()
BAD = {
    "not base64": ({"image": "%%%not base64%%%"}, "not valid base64"),
    "not an image": ({"image": base64.b64encode(b"hello world").decode()}, "not a readable image"),
    "truncated": ({"image": TRUNCATED}, "not a base64-encoded"),
    "2 channels": ({"array": np.zeros((4, 4, 2), int).tolist()}, "2 channels"),
    "5 channels": ({"array": np.zeros((4, 4, 5), int).tolist()}, "5 channels"),
    "ragged": ({"array": [[1, 2], [3]]}, "ragged"),
    "out of range": ({"array": [[0, 256]]}, "integers 0..255"),
    "fractions": ({"array": [[0.5, 1.0]]}, "integers 0..255"),
    "1-d": ({"array": [1, 2, 3]}, "HxW or HxWxC"),
    "text array": ({"array": [["a", "b"]]}, "HxW or HxWxC"),
    "empty": ({"array": [[]]}, "empty"),
    "both": ({"image": encoded(rgb(4, 4)), "array": [[1]]}, "not both"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_rows_raise_invalid_parameter_value_naming_the_row(model, case):
    row, message = BAD[case]
    good = {"image": encoded(rgb(5, 5))}
    with pytest.raises(MlflowException) as info:
        model.predict(pd.DataFrame([good, row]))
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "row 1:" in info.value.message and message in info.value.message


def test_pixel_limit_is_read_at_load_time(store, monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "100")
    small = mlflow.pyfunc.load_model(store["model"])
    check(small.predict(pd.DataFrame({"image": [encoded(rgb(10, 10))]})), [(10, 10)])
    for row in ({"image": encoded(rgb(10, 11))}, {"array": rgb(11, 10).tolist()}):
        with pytest.raises(MlflowException, match=r"row 0: image is .* more than the limit 100"):
            small.predict(pd.DataFrame([row]))


def test_max_pixels_setting(monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    assert max_pixels_setting(None) == 4096 * 4096
    assert max_pixels_setting({"max_pixels": 50}) == 50
    monkeypatch.setenv(MAX_PIXELS_ENV, "70")
    assert max_pixels_setting({"max_pixels": 50}) == 70
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match="positive integer"):
        max_pixels_setting(None)


# --- a real server on loopback ---------------------------------------------------------------


def post(url: str, payload: dict) -> tuple[int, dict]:
    """Status and JSON body of a POST to /invocations (4xx/5xx too)."""
    body = json.dumps(payload).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextmanager
def served(store: dict, log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`mlflow models serve` of the store's model on a free loopback port, up (/ping answers):
    its base URL and process. Its session (uvicorn workers included) is stopped on exit."""
    port = free_port()
    # mlflow execs `uvicorn` by name: the venv's bin must be on PATH even when not activated.
    env = {**bin_on_path(), "MLFLOW_TRACKING_URI": store["uri"], MAX_PIXELS_ENV: "5000"}
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", store["model"], "--env-manager", "local"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with running(cmd, base + "/ping", log, env, timeout=120, grace=20) as proc:
        yield base, proc


def good_requests(url: str) -> None:
    images = [rgb(20, 30), rgb(33, 17)]
    split = {"columns": ["image"], "data": [[encoded(im)] for im in images]}
    status, body = post(url, {"dataframe_split": split})
    assert status == 200, body
    check(pd.DataFrame(body["predictions"]), [(20, 30), (33, 17)])
    records = [{"image": encoded(images[0], "JPEG")}, {"array": images[1].tolist()}]
    status, body = post(url, {"dataframe_records": records})
    assert status == 200, body
    check(pd.DataFrame(body["predictions"]), [(20, 30), (33, 17)])
    status, body = post(url, {"inputs": {"array": [np.zeros((9, 7), int).tolist()]}})
    assert status == 200, body
    check(pd.DataFrame(body["predictions"]), [(9, 7)])


@pytest.mark.slow
def test_mlflow_models_serve_answers_and_survives_bad_payloads(store, tmp_path):
    with served(store, tmp_path / "server.log") as (base, proc):
        good_requests(base + "/invocations")
        bad = [
            ({"image": base64.b64encode(b"not an image").decode()}, "not a readable image"),
            ({"array": np.zeros((4, 4, 2), int).tolist()}, "2 channels"),
            ({"image": encoded(rgb(100, 100))}, "more than the limit 5000"),
        ]
        for row, message in bad:
            status, body = post(base + "/invocations", {"dataframe_records": [row]})
            assert status == 400, body
            assert body["error_code"] == "INVALID_PARAMETER_VALUE" and message in body["message"]
        good_requests(base + "/invocations")  # still serving
        assert proc.poll() is None
    # It was serving until stopped, and SIGTERM ended it (-9 would mean it needed SIGKILL).
    assert proc.returncode == -signal.SIGTERM, proc.returncode


def test_segops_serve_resolves_the_model_then_execs_mlflow(store, monkeypatch, tmp_path):
    from segops.cli import serve as cli
    from segops.promotion.registry import RegistryError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the defaults
    calls = []
    monkeypatch.setattr(cli.os, "execve", lambda *args: calls.append(args))
    with pytest.raises(RegistryError, match="not in the registry"):
        cli.serve("models:/no-such-model@champion", params=Path("params.yaml"))
    cli.serve(store["model"], port=5123, max_pixels=99, params=Path("params.yaml"))
    ((exe, argv, env),) = calls
    assert exe == sys.executable and argv[1:6] == ["-m", "mlflow", "models", "serve", "-m"]
    assert argv[6] == f"models:/{NAME}/1" and "--env-manager" in argv and "5123" in argv
    assert env[MAX_PIXELS_ENV] == "99" and env["MLFLOW_TRACKING_URI"] == store["uri"]
