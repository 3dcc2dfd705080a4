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
limit) raises `MlflowException` with `INVALID_PARAMETER_VALUE`, naming the row: the scoring
server answers 400 with that message and keeps serving.

The pixel limit (default 4096*4096) is set at serve time by the environment variable
`SEGOPS_SERVE_MAX_PIXELS`, else by `max_pixels` in the model config (MLflow's
`SERVING_MODEL_CONFIG='{"max_pixels": ...}'`).

Weights travel as a plain state dict (loaded with `weights_only=True`) beside a JSON file with
the resolved config and class names: no pickled objects. The model is logged "from code"
(`model_code.py`), so nothing is cloudpickled.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import AnyType, ParamSchema, ParamSpec
from PIL import Image

MODEL_CODE = Path(__file__).with_name("model_code.py")
MAX_PIXELS_ENV = "SEGOPS_SERVE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_SCORE_THRESHOLD = 0.5
INSTANCE_LISTS = ("classes", "labels", "scores", "boxes", "masks")


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


def bad_input(row: int, problem: str) -> MlflowException:
    """The exception for one bad row (INVALID_PARAMETER_VALUE: the server answers 400)."""
    return MlflowException.invalid_parameter_value(f"row {row}: {problem}")


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


def _present(value: Any) -> bool:
    # Rows of `dataframe_records` that lack a column arrive as None, NaN or pd.NA.
    return isinstance(value, list | tuple | np.ndarray) or not pd.isna(value)


def _check_size(row: int, height: int, width: int, limit: int) -> None:
    if height < 1 or width < 1:
        raise bad_input(row, f"image is empty ({height}x{width})")
    if height * width > limit:
        raise bad_input(
            row,
            f"image is {width}x{height} = {height * width} pixels, more than the limit "
            f"{limit} ({MAX_PIXELS_ENV})",
        )


def image_from_base64(row: int, text: Any, limit: int) -> np.ndarray:
    """HxWx3 uint8 from base64 image text; raises `bad_input` for anything else."""
    from segops.data.io import ReadError, image_from_bytes

    if not isinstance(text, str):
        raise bad_input(row, f"'image' must be base64 text, got {type(text).__name__}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_input(row, "'image' is not valid base64") from None
    try:  # read the header first: refuse a huge image before decoding its pixels
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:
        raise bad_input(row, f"image is too large ({exc})") from None
    except Exception:  # undecodable: image_from_bytes below says why
        width = height = 1
    _check_size(row, height, width, limit)
    try:
        return image_from_bytes(data)
    except ReadError as exc:
        raise bad_input(row, f"'image' is not a base64-encoded PNG/JPEG/TIFF: {exc}") from None


def _as_uint8(row: int, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError:  # numpy 2 refuses ragged nested lists
        raise bad_input(row, "'array' is ragged: rows must all have the same length") from None
    if arr.dtype.kind not in "biuf" or arr.ndim not in (2, 3):
        raise bad_input(
            row, f"'array' must be HxW or HxWxC numbers, got shape {arr.shape} of {arr.dtype}"
        )
    if arr.size and (arr.min() < 0 or arr.max() > 255 or not np.all(arr == np.round(arr))):
        raise bad_input(row, "'array' values must be integers 0..255")
    return arr.astype(np.uint8)


def image_from_array(row: int, value: Any, limit: int) -> np.ndarray:
    """HxWx3 uint8 from a nested list (HxW, HxWx1, HxWx3, HxWx4); raises `bad_input`."""
    arr = _as_uint8(row, value)
    _check_size(row, arr.shape[0], arr.shape[1], limit)
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[2]
    if channels not in (1, 3, 4):
        raise bad_input(
            row,
            f"'array' has {channels} channels; give 1 (grayscale), 3 (RGB) or 4 (RGBA)",
        )
    # Same conversions as segops.data.io: grayscale repeated to RGB, alpha dropped.
    return np.repeat(arr, 3, axis=2) if channels == 1 else np.ascontiguousarray(arr[..., :3])


def row_image(row: int, image: Any, array: Any, limit: int) -> np.ndarray:
    """The HxWx3 uint8 image of one row, from exactly one of `image` and `array`."""
    if _present(image) and _present(array):
        raise bad_input(row, "give either 'image' or 'array', not both")
    if _present(image):
        return image_from_base64(row, image, limit)
    if _present(array):
        return image_from_array(row, array, limit)
    raise bad_input(row, "no input: give 'image' (base64 PNG/JPEG) or 'array' (nested list)")


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """Rebuilds the network from `model.json` + `weights.pt` and predicts at original size."""

    def load_context(self, context) -> None:
        from segops.inference import default_device, load_model_files

        artifacts = context.artifacts
        self.trained = load_model_files(artifacts["weights"], artifacts["meta"], default_device())
        self.kind = self.trained.kind
        self.classes = list(self.trained.classes)
        self.max_pixels = max_pixels_setting(getattr(context, "model_config", None))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """One row per input row: `mask` (base64 PNG) and `pixels_<class>` counts, plus the
        detections of an instance model (see the module docstring)."""
        decoded = self._decode(model_input)
        if self.kind == "instance":
            threshold = score_threshold_param(params)
            return pd.DataFrame([self._instance_row(im, threshold) for im in decoded])
        from segops.inference import predict_image

        return pd.DataFrame([self._row(predict_image(self.trained, im)[0]) for im in decoded])

    def _decode(self, model_input: pd.DataFrame) -> list[np.ndarray]:
        """Every row's HxWx3 uint8 image: all are checked before any is predicted, so a bad
        batch fails fast and whole."""
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        images = model_input.get("image", pd.Series([None] * len(model_input)))
        arrays = model_input.get("array", pd.Series([None] * len(model_input)))
        return [
            row_image(i, im, arr, self.max_pixels)
            for i, (im, arr) in enumerate(zip(images, arrays, strict=True))
        ]

    def _row(self, mask: np.ndarray) -> dict[str, Any]:
        counts = np.bincount(mask.ravel(), minlength=len(self.classes))
        pixels = {f"pixels_{c}": int(counts[k]) for k, c in enumerate(self.classes)}
        return {"mask": encode_png(mask), **pixels}

    def _instance_row(self, image: np.ndarray, threshold: float) -> dict[str, Any]:
        from segops.evaluate.instance_metrics import semantic_from_instances
        from segops.inference import predict_instances_image

        found = kept_detections(predict_instances_image(self.trained, image), threshold)
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
    import torch

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
