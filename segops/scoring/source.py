"""Which model scores: a checkpoint, or a registered version pinned by number.

A `ModelSource` is a small dict that travels (to Ray actors, between flow tasks); each holder
loads the model from it once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from segops.errors import SegopsError

if TYPE_CHECKING:
    from segops.inference import TrainedModel

# lazy imports: the CLI (`segops predict`) and flows/score.py import this module; torch loads
# with the model (`load_source`), MLflow only for a registered model.


def registered_source(model: str) -> dict[str, Any]:
    """Pin `models:/NAME@alias`, `models:/NAME/3` or a bare NAME (meaning `NAME@champion`) to
    its version number: `{"model_uri", "name", "version", "run_id", "champion",
    "tracking_uri"}`. RegistryError, naming the model, when it is not there (e.g. no
    champion)."""
    from segops.promotion.registry import RegistryError, champion, resolve
    from segops.tracking.scoring import tracking_uri

    uri = model if model.startswith("models:/") else f"models:/{model}@champion"
    try:
        ref = resolve(uri)
    except RegistryError as exc:
        raise RegistryError(
            f"{exc}: `segops models history {uri.removeprefix('models:/').split('@')[0]}` "
            "lists its versions and champion moves"
        ) from None
    current = champion(ref.name)
    return {
        "model_uri": ref.uri,
        "name": ref.name,
        "version": ref.version,
        "run_id": ref.run_id,
        "requested": model,
        "champion": current is not None and current.version == ref.version,
        "champion_version": current.version if current else None,
        "tracking_uri": tracking_uri(),
    }


def checkpoint_source(checkpoint: str | Path) -> dict[str, Any]:
    """A checkpoint file as a source; SegopsError when there is none."""
    path = Path(checkpoint)
    if not path.is_file():
        raise SegopsError(
            f"no checkpoint at {path}: pass --model models:/NAME@champion or a checkpoint file"
        )
    return {"checkpoint": str(path.resolve())}


def with_settings(source: dict[str, Any], predict: dict[str, Any]) -> dict[str, Any]:
    """`source` with `predict` settings (e.g. `{"threads": 2, "max_tile": 512}`) that override
    the model's own `predict` section wherever it is loaded (`load_source`, Ray actors too);
    None values are left out."""
    settings = {k: v for k, v in predict.items() if v is not None}
    return source | {"predict": settings} if settings else source


def load_source(source: dict[str, Any], device: str | None = None) -> TrainedModel:
    """The model a source names, on `device` (default: CUDA when present), with the source's
    `predict` settings (`with_settings`) applied."""
    from segops.inference import default_device, load_trained, with_predict

    device = device or default_device()
    if "checkpoint" in source:
        trained = load_trained(source["checkpoint"], device)
    else:
        from segops.serving.registered import load_registered
        from segops.tracking.scoring import use_tracking_uri

        use_tracking_uri(source["tracking_uri"])
        trained = load_registered(source["model_uri"], device)
    return with_predict(trained, source.get("predict", {}))
