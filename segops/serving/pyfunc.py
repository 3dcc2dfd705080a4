"""The MLflow pyfunc model: images in, base64 class-id masks and pixel counts out.

Input: a DataFrame (any of the scoring server's JSON formats: `dataframe_split`,
`dataframe_records`, `inputs`, `instances`) with one image per row in exactly one of two
optional columns:

- `image`: base64 text of an encoded image (PNG, JPEG, TIFF), any size. Decoded like files are
  (`segops.data.io`): grayscale, palette, RGBA and 16-bit images become 8-bit RGB.
- `array`: the pixels as a nested list of integers 0..255, HxW (grayscale), HxWx1, HxWx3 (RGB)
  or HxWx4 (RGBA, alpha dropped). Other channel counts (2, 5, ...) are refused: unlike an
  encoded image, a raw array does not say what its channels mean.

Output: a DataFrame with `mask` (base64 PNG at the input's size, pixel = class id) and one
`pixels_<class>` column per class (pixel counts; they sum to H*W).

Instance models (model.json `kind` "instance", e.g. Mask R-CNN) paint `mask` from their
detections (higher scores on top) and add, one entry per detection, highest score first:
`instances` (the count), `classes` (names), `labels` (class ids), `scores` (floats), `boxes`
([x0, y0, x1, y1] in input pixels) and `masks` (base64 PNG, uint8 0/255 at the input's size).
Detections scoring below `score_threshold` (default 0.5; per request with the pyfunc params,
`predict(df, params={"score_threshold": 0.3})` or `"params": {...}` in the JSON) are left out
of every column. A threshold outside 0..1 is refused with `INVALID_PARAMETER_VALUE`.

Bad input (not an image, ragged or non-integer arrays, wrong channels, more pixels than the
limit, a row with neither field or a null one, fields other than `image` and `array`) raises
`MlflowException` with `INVALID_PARAMETER_VALUE`, naming the row: the scoring server answers
400 with that message and keeps serving. Sizes are checked from image headers and list lengths
before anything is decoded (`segops.serving.payload`).

Images go through the network in batches (`segops.inference.predict_masks`): a request of N
rows of a semantic model costs about ceil(N / batch size) forward passes (sliding windows of
large images count as pieces too), each mask identical to predicting its image alone. The batch
size is `SEGOPS_SERVE_BATCH_SIZE`, else `batch_size` in the model config (MLflow lets a
load override only keys the model was logged with), else the trained config's
`predict.batch_size` (default 8). Instance models predict row by row. Likewise
`SEGOPS_SERVE_THREADS`, `SEGOPS_SERVE_MAX_TILE` and `SEGOPS_SERVE_OVERLAP`, else `threads`,
`max_tile` and `overlap` in the model config, override the trained config's `predict.threads`,
`.max_tile` and `.overlap` (`predict_settings`).

The pixel limit (default 4096*4096; it also bounds the area a sliding window covers) is set at
serve time by the environment variable `SEGOPS_SERVE_MAX_PIXELS`, else by `max_pixels` in the
model config (MLflow's `SERVING_MODEL_CONFIG='{"max_pixels": ...}'`). A time budget per request
and a bound on concurrent predictions stop the work itself (`segops.serving.limits`: 504 past
`SEGOPS_SERVE_MAX_SECONDS`, 503 beyond `SEGOPS_SERVE_MAX_CONCURRENT`).

Weights travel as a plain state dict (loaded with `weights_only=True`) beside a JSON file with
the resolved config and class names: no pickled objects. The model is logged "from code"
(`model_code.py`), so nothing is cloudpickled.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import AnyType, ParamSchema, ParamSpec
from PIL import Image

from segops import inference
from segops.metrics.instance import semantic_from_instances
from segops.serving.limits import Gate, Limits, check_deadline, watch
from segops.serving.payload import (  # noqa: F401  (re-exported: the row checks live there)
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    PixelBudget,
    bad_input,
    check_fields,
    check_row,
    image_from_array,
    image_from_base64,
    row_image,
)

MODEL_CODE = Path(__file__).with_name("model_code.py")
BATCH_SIZE_ENV = "SEGOPS_SERVE_BATCH_SIZE"
DEFAULT_SCORE_THRESHOLD = 0.5
INSTANCE_LISTS = ("classes", "labels", "scores", "boxes", "masks")
PREDICT_KEYS = ("threads", "max_tile", "overlap")  # model config keys over `predict.*`


def encode_png(array: np.ndarray) -> str:
    """base64 text of `array` saved as PNG."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode_png(text: str) -> np.ndarray:
    """The array inside base64 PNG text."""
    return np.array(Image.open(io.BytesIO(base64.b64decode(text))))


def signature(classes: list[str], kind: str = "semantic") -> ModelSignature:
    """Inputs `image` (string) and `array` (nested list), both optional; outputs `mask`
    (string) and `pixels_<class>` (long). An instance model also outputs `instances` (long)
    and the lists `classes`, `labels`, `scores`, `boxes`, `masks`, and takes the param
    `score_threshold` (double, default 0.5)."""
    # AnyType: an HxW and an HxWx3 list differ in depth, so no single Array type fits both.
    inputs = Schema(
        [ColSpec("string", "image", required=False), ColSpec(AnyType(), "array", required=False)]
    )
    outputs = [ColSpec("string", "mask")] + [ColSpec("long", f"pixels_{c}") for c in classes]
    if kind != "instance":
        return ModelSignature(inputs=inputs, outputs=Schema(outputs))
    outputs += [ColSpec("long", "instances")] + [ColSpec(AnyType(), c) for c in INSTANCE_LISTS]
    params = ParamSchema([ParamSpec("score_threshold", "double", DEFAULT_SCORE_THRESHOLD)])
    return ModelSignature(inputs=inputs, outputs=Schema(outputs), params=params)


def max_pixels_setting(model_config: dict[str, Any] | None) -> int:
    """The pixel limit: env `SEGOPS_SERVE_MAX_PIXELS`, else `max_pixels` in the model config,
    else DEFAULT_MAX_PIXELS. Raises ValueError for a value that is not a positive integer."""
    raw = os.environ.get(MAX_PIXELS_ENV) or (model_config or {}).get("max_pixels")
    if raw is None:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_PIXELS_ENV} / max_pixels = {raw!r}: give a positive integer")
    return value


def batch_size_setting(model_config: dict[str, Any] | None, default: int) -> int:
    """Images per forward pass: env `SEGOPS_SERVE_BATCH_SIZE`, else `batch_size` in the model
    config, else `default`. Raises ValueError for a value that is not a positive integer."""
    raw = os.environ.get(BATCH_SIZE_ENV) or (model_config or {}).get("batch_size")
    if raw is None:
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = 0
    if isinstance(raw, bool) or value < 1:
        raise ValueError(f"{BATCH_SIZE_ENV} / batch_size = {raw!r}: give a positive integer")
    return value


def predict_settings(model_config: dict[str, Any] | None) -> dict[str, Any]:
    """`threads`, `max_tile` and `overlap` from env `SEGOPS_SERVE_THREADS`, `..._MAX_TILE`,
    `..._OVERLAP`, else the model config: they override the trained config's `predict`
    section, as `segops predict --threads/--max-tile/--overlap` do (validated as in
    params.yaml: ConfigError at load for a bad value)."""
    config, settings = model_config or {}, {}
    for key in PREDICT_KEYS:
        value = os.environ.get(f"SEGOPS_SERVE_{key.upper()}") or config.get(key)
        if value is not None:
            settings[key] = value
    return settings


def score_threshold_param(params: dict[str, Any] | None) -> float:
    """`score_threshold` from the pyfunc params (default 0.5); raises INVALID_PARAMETER_VALUE
    unless it is a number from 0 to 1."""
    raw = (params or {}).get("score_threshold")
    if raw is None:
        return DEFAULT_SCORE_THRESHOLD
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(raw, bool) or not 0.0 <= value <= 1.0:
        raise MlflowException.invalid_parameter_value(
            f"score_threshold = {raw!r}: give a number from 0 to 1"
        )
    return value


def kept_detections(found: dict[str, np.ndarray], threshold: float) -> dict[str, np.ndarray]:
    """The detections scoring at least `threshold`, highest score first."""
    scores = np.asarray(found["scores"])
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= threshold]
    return {key: np.asarray(value)[order] for key, value in found.items()}


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """Rebuilds the network from `model.json` + `weights.pt` and predicts at original size."""

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        model_config = getattr(context, "model_config", None)
        device = inference.default_device()
        trained = inference.load_model_files(artifacts["weights"], artifacts["meta"], device)
        self.trained = inference.with_predict(trained, predict_settings(model_config))
        self.kind = self.trained.kind
        self.classes = list(self.trained.classes)
        self.max_pixels = max_pixels_setting(model_config)
        default_batch = self.trained.config.predict.batch_size
        self.batch_size = batch_size_setting(model_config, default_batch)
        # The area the sliding window covers (see segops.inference.predict_image): windows of
        # `data.crop_size` always for models trained on crops, else of `data.image_size` above
        # SLIDE_ABOVE of it; instance models resize internally.
        data = self.trained.config.data
        crop = getattr(data, "crop_size", None)
        window = (crop or data.image_size) if self.kind == "semantic" else None
        slide = 0.0 if crop else inference.SLIDE_ABOVE
        self.budget = PixelBudget(self.max_pixels, window, slide)
        self.gate = Gate(Limits.read(model_config))
        watch(self.trained.model)  # the time budget is checked before every layer

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """One row per input row: `mask` (base64 PNG) and `pixels_<class>` counts, plus the
        detections of an instance model (see the module docstring). Every row is checked
        (fields, sizes from headers) before any is decoded; rows are then decoded and
        predicted in batches (instance models: one at a time), within the time budget and the
        concurrency bound."""
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        check_fields(model_input)
        threshold = score_threshold_param(params) if self.kind == "instance" else None
        rows = list(self._rows(model_input))
        for i, (image, array) in enumerate(rows):
            check_row(i, image, array, self.budget)
        with self.gate.admit():
            if threshold is None:
                return pd.DataFrame(self._predict_batched(rows))
            return pd.DataFrame(
                [self._predict_row(i, *row, threshold) for i, row in enumerate(rows)]
            )

    @staticmethod
    def _rows(model_input: pd.DataFrame) -> zip:
        missing = pd.Series([None] * len(model_input), index=model_input.index)
        images = model_input.get("image", missing)
        arrays = model_input.get("array", missing)
        return zip(images, arrays, strict=True)

    def _predict_batched(self, rows: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
        images = []
        for i, (image, array) in enumerate(rows):
            check_deadline()
            images.append(row_image(i, image, array, self.budget))
        masks = inference.predict_masks(self.trained, images, self.batch_size)
        return [self._row(mask) for mask in masks]

    def _predict_row(self, i: int, image: Any, array: Any, threshold: float) -> dict[str, Any]:
        check_deadline()
        return self._instance_row(row_image(i, image, array, self.budget), threshold)

    def _row(self, mask: np.ndarray) -> dict[str, Any]:
        counts = np.bincount(mask.ravel(), minlength=len(self.classes))
        pixels = {f"pixels_{c}": int(counts[k]) for k, c in enumerate(self.classes)}
        return {"mask": encode_png(mask), **pixels}

    def _instance_row(self, image: np.ndarray, threshold: float) -> dict[str, Any]:
        found = kept_detections(inference.predict_instances_image(self.trained, image), threshold)
        height, width = image.shape[:2]
        painted = semantic_from_instances(found, len(self.classes), height, width, 0.0)
        return {**self._row(painted.astype(np.uint8)), **self._detections(found)}

    def _detections(self, found: dict[str, np.ndarray]) -> dict[str, Any]:
        labels = [int(k) for k in found["labels"]]
        return {
            "instances": len(labels),
            "classes": [self.classes[k] for k in labels],
            "labels": labels,
            "scores": [float(s) for s in found["scores"]],
            "boxes": [[float(v) for v in box] for box in found["boxes"]],
            "masks": [encode_png(m.astype(np.uint8) * 255) for m in found["masks"]],
        }


def write_model_files(checkpoint: dict, out: Path) -> dict[str, str]:
    """Write `weights.pt` (state dict) and `model.json` (config, classes, kind) for logging."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint["model"], out / "weights.pt")
    meta = {
        "config": checkpoint["config"],
        "classes": checkpoint["classes"],
        "model_name": checkpoint["model_name"],
        "kind": checkpoint.get("kind", "semantic"),
        "dataset_hash": checkpoint["dataset_hash"],
        "config_hash": checkpoint["config_hash"],
    }
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    return {"weights": str(out / "weights.pt"), "meta": str(out / "model.json")}
