"""The model's contract, `model.json`, travelling beside its weights (in the registered model and
beside `best.pt`), in the spirit of MONAI bundle metadata: what the model takes (input spec),
what it returns (output spec), how well it did (headline metrics), what it ran on (package
versions) and what it was made from (the lineage record). A consumer needs nothing else to call
it correctly; `segops audit` checks the contract against the registry's tags.

The file keeps the keys serving reads (`config`, `classes`, `model_name`, `kind`, ...) at the
top level and adds the contract beside them, so older readers keep working.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from segops.errors import SegopsError
from segops.predict_config import PredictConfig, tiling_rule
from segops.record import LineageError, LineageRecord

SCHEMA = "segops.model/1"
CONTRACT_KEYS = ("schema", "input", "output", "metrics", "versions", "lineage")
HEADLINE_METRICS = ("mean_iou", "mean_dice", "pixel_accuracy", "mask_ap", "test_mean_iou")
PACKAGES = ("segops", "torch", "torchvision", "mlflow", "numpy", "pillow", "pandas", "pydantic")
INSTANCE_FIELDS = {
    "instances": "number of detected instances",
    "classes": "class name of each instance",
    "labels": "class id of each instance",
    "scores": "confidence of each instance, 0..1",
    "boxes": "x1, y1, x2, y2 of each instance, in input pixels",
    "masks": "base64 PNG of each instance's binary mask (0/255), input size",
}


class ContractError(SegopsError):
    """A `model.json` that is missing, not JSON, or lacks part of the contract."""


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def input_spec(config: dict[str, Any]) -> dict[str, Any]:
    """What the model takes: uint8 RGB images of any size, how they are normalised, and the
    inference protocol (resize, tile, overlap) that turns an image into model inputs."""
    data, augment = config.get("data", {}), config.get("augment", {})
    predict = PredictConfig.model_validate(config.get("predict", {}))
    window = data.get("crop_size") or data.get("image_size")
    tiles = tiling_rule(predict.max_tile, window, predict.overlap)
    return {
        "image": "uint8 RGB, H x W x 3, any size (grayscale and RGBA are converted to RGB)",
        "channels": 3,
        "payload": "column `image` (base64 PNG/JPEG/TIFF) or `array` (nested list, H x W x 3)",
        "normalisation": {"mean": augment.get("mean"), "std": augment.get("std")},
        "image_size": data.get("image_size"),
        "crop_size": data.get("crop_size"),
        "scale": data.get("scale"),
        "tiling": f"at the training scale, predictions at the original size; tiles: {tiles}",
        "max_tile": predict.max_tile,
        "overlap": predict.overlap,
    }


def output_spec(classes: list[str], kind: str) -> dict[str, Any]:
    """What the model returns: a class-id mask at the input's size, pixel counts per class and,
    for instance models, one entry per detected instance."""
    out: dict[str, Any] = {
        "mask": "base64 PNG, uint8 class ids (index into `classes`), same H x W as the input",
        "classes": list(classes),
        "pixels": {f"pixels_{name}": f"pixels predicted as {name}" for name in classes},
    }
    if kind == "instance":
        out["instance_fields"] = dict(INSTANCE_FIELDS)
        out["params"] = {"score_threshold": "float 0..1, default 0.5"}
    return out


def lineage_section(tags: dict[str, str]) -> dict[str, Any]:
    """The lineage record read from the run's tags, or why there is none (a model logged
    outside the flow, e.g. by `segops train` alone)."""
    try:
        record = LineageRecord.from_tags(tags, "the model's run")
    except LineageError as exc:
        return {"available": False, "reason": str(exc)}
    return {"available": True, "tags": record.to_tags()}


def build_contract(
    meta: dict[str, Any], tags: dict[str, str], metrics: dict[str, float]
) -> dict[str, Any]:
    """`meta` (the serving keys of model.json) completed with the contract."""
    kind = str(meta.get("kind", "semantic"))
    return meta | {
        "schema": SCHEMA,
        "input": input_spec(meta.get("config", {})),
        "output": output_spec(list(meta.get("classes", [])), kind),
        "metrics": {k: float(metrics[k]) for k in HEADLINE_METRICS if k in metrics},
        "versions": _versions(),
        "lineage": lineage_section(tags),
    }


def write_contract(path: str | Path, contract: dict[str, Any]) -> Path:
    """Write `contract` to `path` atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(contract, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def read_contract(path: str | Path) -> dict[str, Any]:
    """The contract in `path`; ContractError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ContractError(f"{path}: no model.json beside the weights") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContractError(f"{path}: not a JSON model contract ({exc})") from None
    missing = [key for key in CONTRACT_KEYS if key not in data]
    if missing:
        raise ContractError(
            f"{path}: model.json lacks {', '.join(missing)}: the model was logged before its "
            "contract existed; log it again (segops run) to get one"
        )
    if data["schema"] != SCHEMA:
        raise ContractError(f"{path}: schema {data['schema']!r}, this segops reads {SCHEMA!r}")
    return data
