"""Log a trained checkpoint as an MLflow pyfunc model (weights + code, no pickles)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import PIL
import pydantic
import torch
import torchvision
import yaml

import segops
from segops.serving.contract import build_contract, write_contract
from segops.serving.pyfunc import MODEL_CODE, encode_png, signature, write_model_files
from segops.train.checkpoint import file_sha256, load_checkpoint


def _requirements() -> list[str]:
    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={str(torch.__version__).split('+')[0]}",
        f"torchvision=={torchvision.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
        f"pillow=={PIL.__version__}",
        f"pydantic=={pydantic.__version__}",
        f"pyyaml=={yaml.__version__}",
    ]


def input_example(size: int, n: int = 2) -> pd.DataFrame:
    """`n` (>= 2, see docs/development.md) random RGB base64 PNGs: the model's input example."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    return pd.DataFrame({"image": [encode_png(im) for im in images]})


def log_pyfunc(run_id: str, checkpoint: str | Path, name: str = "model") -> str:
    """Log `checkpoint` into run `run_id` as a pyfunc model; returns its `models:/` URI.

    An instance checkpoint (`kind` "instance", e.g. Mask R-CNN) gets the instance signature:
    detection columns and the `score_threshold` param.
    Tags the run with `segops.weights_sha256`, the hash of the logged `weights.pt`, so an
    audit can prove the registered weights are the ones trained.
    The segops package travels with the model (code_paths), so serving needs only the pinned
    pip requirements, not a segops install.
    Its `model.json` carries the contract (`segops.serving.contract`): input and output spec,
    the run's headline metrics, package versions and lineage record; a copy is written beside
    `checkpoint`.
    """
    ckpt = load_checkpoint(checkpoint)
    run = mlflow.MlflowClient().get_run(run_id)
    # MLflow predicts the example while logging: image_size keeps it small (Mask R-CNN on CPU).
    size = int(ckpt["config"]["data"]["image_size"])
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        artifacts = write_model_files(ckpt, Path(tmp))
        meta = json.loads(Path(artifacts["meta"]).read_text())
        contract = build_contract(meta, run.data.tags, run.data.metrics)
        write_contract(artifacts["meta"], contract)
        write_contract(Path(checkpoint).with_name("model.json"), contract)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts=artifacts,
            code_paths=[str(Path(segops.__file__).parent)],
            signature=signature(ckpt["classes"], ckpt.get("kind", "semantic")),
            input_example=input_example(size),
            pip_requirements=_requirements(),
        )
        mlflow.set_tag("segops.weights_sha256", file_sha256(artifacts["weights"]))
    return info.model_uri
