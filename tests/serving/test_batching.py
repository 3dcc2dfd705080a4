"""The served model predicts a request's rows in batches: ceil(N / batch) forward passes."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config
from mlflow.exceptions import MlflowException
from PIL import Image

from segops.inference import load_trained, predict_image
from segops.serving.pyfunc import (
    BATCH_SIZE_ENV,
    SegmentationModel,
    batch_size_setting,
    decode_png,
)

RNG = np.random.default_rng(3)


def png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def logged(shapes_root, tmp_path_factory):
    """A tiny trained U-Net (32-pixel input): the pyfunc's artifacts (`weights.pt` and
    `model.json`, as logging writes them) and its checkpoint. The pyfunc is loaded from them
    directly: `tests/faults/test_serving_abuse.py` covers loading through MLflow."""
    from segops.serving.pyfunc import write_model_files
    from segops.train.checkpoint import load_checkpoint
    from segops.train.loop import train

    tmp = tmp_path_factory.mktemp("batching")
    result = train(tiny_config(shapes_root, tmp / "run", "train.epochs=1"))
    artifacts = write_model_files(load_checkpoint(result.best_checkpoint), tmp / "model")
    return artifacts, result.best_checkpoint


def counted(artifacts: dict, monkeypatch, batch_size: int | None = None):
    """The pyfunc loaded (with SEGOPS_SERVE_BATCH_SIZE when given), and the batch sizes of
    its forward passes."""
    monkeypatch.delenv(BATCH_SIZE_ENV, raising=False)
    if batch_size is not None:
        monkeypatch.setenv(BATCH_SIZE_ENV, str(batch_size))
    model = SegmentationModel()
    model.load_context(SimpleNamespace(artifacts=artifacts, model_config=None))
    calls: list[int] = []
    model.trained.model.register_forward_hook(lambda _m, args, _out: calls.append(len(args[0])))
    return model, calls


def test_n_rows_take_ceil_n_over_batch_forwards_with_per_image_masks(logged, monkeypatch):
    artifacts, checkpoint = logged
    model, calls = counted(artifacts, monkeypatch, 4)
    images = [RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(32, 32)] * 6]
    images += [RNG.integers(0, 256, (20, 28, 3), dtype=np.uint8) for _ in range(4)]
    out = model.predict(None, pd.DataFrame({"image": [png(a) for a in images]}))
    assert calls == [4, 4, 2]  # 10 rows, batches of 4: ceil(10 / 4) forwards
    alone = load_trained(checkpoint)
    for image, text in zip(images, out["mask"], strict=True):
        assert np.array_equal(decode_png(text), predict_image(alone, image)[0])
    default, calls = counted(artifacts, monkeypatch)  # predict.batch_size of the trained config: 8
    default.predict(None, pd.DataFrame({"array": [a.tolist() for a in images[:9]]}))
    assert calls == [8, 1]


def test_a_bad_row_is_refused_naming_it_before_any_forward(logged, monkeypatch):
    model, calls = counted(logged[0], monkeypatch, 4)
    rows = [png(np.zeros((32, 32, 3), np.uint8))] * 5 + ["bm90IGFuIGltYWdl"]
    with pytest.raises(MlflowException) as info:
        model.predict(None, pd.DataFrame({"image": rows}))
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
