"""The served model predicts a request's rows in batches: ceil(N / batch) forward passes."""

from __future__ import annotations

import base64
import io

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config
from mlflow.exceptions import MlflowException
from PIL import Image

from segops.inference import load_trained, predict_image
from segops.serving.pyfunc import BATCH_SIZE_ENV, batch_size_setting, decode_png

RNG = np.random.default_rng(3)


def png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def logged(shapes_root, tmp_path_factory):
    """A tiny trained U-Net (32-pixel input) logged as a pyfunc: (model URI, checkpoint)."""
    from segops.serving.logging import log_pyfunc
    from segops.train.loop import train

    tmp = tmp_path_factory.mktemp("batching")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv(BATCH_SIZE_ENV, raising=False)
        mlflow.set_tracking_uri(uri)
        result = train(tiny_config(shapes_root, tmp / "run", "train.epochs=1"))
        client = mlflow.MlflowClient()
        exp = client.create_experiment("batching", artifact_location=(tmp / "art").as_uri())
        run_id = client.create_run(exp).info.run_id
        yield log_pyfunc(run_id, result.best_checkpoint), result.best_checkpoint
        mlflow.set_tracking_uri(None)  # also unsets the env var: before the context restores it


def counted(model_uri: str, monkeypatch, batch_size: int | None = None):
    """The pyfunc loaded (with SEGOPS_SERVE_BATCH_SIZE when given), and the batch sizes of
    its forward passes."""
    monkeypatch.delenv(BATCH_SIZE_ENV, raising=False)
    if batch_size is not None:
        monkeypatch.setenv(BATCH_SIZE_ENV, str(batch_size))
    model = mlflow.pyfunc.load_model(model_uri)
    calls: list[int] = []
    net = model.unwrap_python_model().trained.model
    net.register_forward_hook(lambda _m, args, _out: calls.append(len(args[0])))
    return model, calls


@pytest.mark.slow
def test_n_rows_take_ceil_n_over_batch_forwards_with_per_image_masks(logged, monkeypatch):
    model_uri, checkpoint = logged
    model, calls = counted(model_uri, monkeypatch, 4)
    images = [RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(32, 32)] * 6]
    images += [RNG.integers(0, 256, (20, 28, 3), dtype=np.uint8) for _ in range(4)]
    out = model.predict(pd.DataFrame({"image": [png(a) for a in images]}))
    assert calls == [4, 4, 2]  # 10 rows, batches of 4: ceil(10 / 4) forwards
    alone = load_trained(checkpoint)
    for image, text in zip(images, out["mask"], strict=True):
        assert np.array_equal(decode_png(text), predict_image(alone, image)[0])
    default, calls = counted(model_uri, monkeypatch)  # predict.batch_size of the trained config: 8
    default.predict(pd.DataFrame({"array": [a.tolist() for a in images[:9]]}))
    assert calls == [8, 1]


@pytest.mark.slow
def test_a_bad_row_is_refused_naming_it_before_any_forward(logged, monkeypatch):
    model, calls = counted(logged[0], monkeypatch, 4)
    rows = [png(np.zeros((32, 32, 3), np.uint8))] * 5 + ["bm90IGFuIGltYWdl"]
    with pytest.raises(MlflowException) as info:
        model.predict(pd.DataFrame({"image": rows}))
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    assert info.value.message.startswith("row 5:") and calls == []


def test_the_batch_size_setting(monkeypatch):
    monkeypatch.delenv(BATCH_SIZE_ENV, raising=False)
    assert batch_size_setting(None, 8) == 8
    assert batch_size_setting({"batch_size": 3}, 8) == 3
    monkeypatch.setenv(BATCH_SIZE_ENV, "16")
    assert batch_size_setting({"batch_size": 3}, 8) == 16
    monkeypatch.setenv(BATCH_SIZE_ENV, "0")
    with pytest.raises(ValueError, match=BATCH_SIZE_ENV):
        batch_size_setting(None, 8)
