"""A registered model version back as a `TrainedModel`, for batch prediction and reports."""

from __future__ import annotations

import tempfile
from pathlib import Path

from segops import tracking
from segops.inference import TrainedModel, default_device, load_model_files
from segops.promotion.registry import resolve


def load_registered(model_uri: str, device: str | None = None) -> TrainedModel:
    """Download `models:/name/3` (or `@alias`) and rebuild its network from the state dict."""

    ref = resolve(model_uri)  # a clear RegistryError for an unknown name, version or alias
    with tempfile.TemporaryDirectory(prefix="segops-model-") as tmp:
        local = tracking.download_model(ref.uri, tmp)
        weights = next(Path(local).rglob("weights.pt"))
        return load_model_files(
            weights, weights.with_name("model.json"), device or default_device()
        )
