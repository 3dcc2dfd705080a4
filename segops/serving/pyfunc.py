"""The MLflow pyfunc model: base64 images in, base64 class-id masks and pixel counts out.

Input: a DataFrame with a string column `image` (base64 PNG/JPEG/TIFF, any size).
Output: a DataFrame with `mask` (base64 PNG at the input's size, pixel = class id) and one
`pixels_<class>` column per class. Weights travel as a plain state dict (loaded with
`weights_only=True`) beside a JSON file with the resolved config and class names: no pickled
objects. The model is logged "from code" (`model_code.py`), so nothing is cloudpickled.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from PIL import Image

MODEL_CODE = Path(__file__).with_name("model_code.py")


def encode_png(array: np.ndarray) -> str:
    """base64 text of `array` saved as PNG."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode_png(text: str) -> np.ndarray:
    """The array inside base64 PNG text."""
    return np.array(Image.open(io.BytesIO(base64.b64decode(text))))


def signature(classes: list[str]) -> ModelSignature:
    """Input `image` (string), output `mask` (string) and `pixels_<class>` (long) columns."""
    outputs = [ColSpec("string", "mask")] + [ColSpec("long", f"pixels_{c}") for c in classes]
    return ModelSignature(inputs=Schema([ColSpec("string", "image")]), outputs=Schema(outputs))


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """Rebuilds the network from `model.json` + `weights.pt` and predicts at original size."""

    def load_context(self, context) -> None:
        from segops.inference import default_device, load_model_files

        artifacts = context.artifacts
        self.trained = load_model_files(artifacts["weights"], artifacts["meta"], default_device())
        self.classes = list(self.trained.classes)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from segops.data.io import ReadError, image_from_bytes
        from segops.inference import predict_image

        rows = []
        for i, text in enumerate(model_input["image"]):
            try:
                image = image_from_bytes(base64.b64decode(text, validate=True))
            except (ReadError, ValueError) as exc:
                raise ValueError(
                    f"row {i}: 'image' is not a base64-encoded image ({exc})"
                ) from None
            mask, _ = predict_image(self.trained, image)
            counts = np.bincount(mask.ravel(), minlength=len(self.classes))
            rows.append(
                {
                    "mask": encode_png(mask),
                    **{f"pixels_{c}": int(counts[k]) for k, c in enumerate(self.classes)},
                }
            )
        return pd.DataFrame(rows)


def write_model_files(checkpoint: dict, out: Path) -> dict[str, str]:
    """Write `weights.pt` (state dict) and `model.json` (config, classes) for logging."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint["model"], out / "weights.pt")
    meta = {
        "config": checkpoint["config"],
        "classes": checkpoint["classes"],
        "model_name": checkpoint["model_name"],
        "dataset_hash": checkpoint["dataset_hash"],
        "config_hash": checkpoint["config_hash"],
    }
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    return {"weights": str(out / "weights.pt"), "meta": str(out / "model.json")}
