"""Typed configuration: `params.yaml` (one section per step) plus `--set key=value` overrides.

The resolved config is what every checkpoint, metrics file and run carries; `config_hash`
identifies it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from segops.data.data_config import DataConfig  # the data section (format registry, options)
from segops.errors import ConfigError
from segops.predict_config import PredictConfig  # the predict section (outside the hash)

IGNORE_INDEX = 255


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShapesConfig(_Section):
    n: int = Field(1500, ge=4)
    size: int = Field(64, ge=32)
    seed: int = 0


class AugmentConfig(_Section):
    scale: tuple[float, float] = (0.6, 1.0)
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    vflip: float = Field(0.5, ge=0.0, le=1.0)
    rotation: float = Field(0.0, ge=0.0, le=180.0, description="max degrees; 0 disables")
    color_jitter: float = Field(0.2, ge=0.0, le=1.0)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ModelConfig(_Section):
    name: str = "unet"
    pretrained: str | None = Field(
        None, description="'torchvision' for torchvision's weights, or a path to a state dict"
    )
    options: dict[str, Any] = Field(default_factory=dict)


class DistributedConfig(_Section):  # torchrun DDP (segops.train.launch)
    nproc_per_node: Annotated[int, Field(ge=1)] | Literal["auto"] = 1  # auto: visible GPUs
    nnodes: int = Field(1, ge=1)
    node_rank: int = Field(0, ge=0)
    rdzv_endpoint: str | None = None  # host:port of the c10d rendezvous
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    max_restarts: int = Field(0, ge=0)  # times torchrun restarts the group after a crash


class TrainConfig(_Section):
    epochs: int = Field(25, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    loss: Literal["ce", "dice", "ce_dice"] = "ce_dice"
    class_weights: Literal["none", "balanced"] | list[float] = "none"
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto"] | bool = "auto"
    threads: Literal["auto"] | Annotated[int, Field(ge=1)] = Field(
        "auto", description="torch CPU threads; auto: usable cores, 1 when others keep them busy"
    )
    deterministic: bool = False
    seed: int = 0
    early_stopping_patience: int | None = Field(None, ge=1)
    grad_clip: float | None = Field(None, gt=0)
    out_dir: Path = Path("runs/latest")
    distributed: DistributedConfig = DistributedConfig()  # world: nproc_per_node x nnodes ranks

    @model_validator(mode="after")
    def _weights_positive(self) -> TrainConfig:
        if isinstance(self.class_weights, list) and any(w < 0 for w in self.class_weights):
            raise ValueError("class_weights must be non-negative")
        return self


class EvaluateConfig(_Section):
    split: Literal["train", "val", "test"] = "val"
    batch_size: int = Field(32, ge=1)
    worst_k: int = Field(8, ge=1, description="images shown in the overlay grid, worst IoU first")


class ValidationConfig(_Section):
    """Great Expectations checks run before training (segops.validation)."""

    foreground_fraction: tuple[float, float] = Field(
        (0.0, 1.0), description="bounds on each image's fraction of non-background pixels"
    )
    required_splits: tuple[str, ...] = ("train", "val")
    report_dir: Path = Path("runs/latest/validation")


class VersioningConfig(_Section):
    """DVC versioning of the dataset directory (segops.versioning)."""

    path: Path = Field(Path("data"), description="directory DVC tracks; <path>.dvc beside it")
    remote: str = Field("local", description="name of the DVC remote to push to")
    remote_url: str | None = Field(
        None, description="if set, (re)configures `remote` with this URL (local dir, s3://...)"
    )
    push: bool = True


class TrackingConfig(_Section):
    """MLflow tracking (segops.tracking). MLFLOW_TRACKING_URI, when set, wins over `uri`."""

    uri: str = "sqlite:///mlflow/mlflow.db"
    artifact_root: str = "mlflow/artifacts"
    experiment: str = "segops"


class PromotionConfig(_Section):
    """Registry and promotion gate (segops.promotion)."""

    model_name: str = Field(
        "auto", description="registered model name; auto = segops-<dataset folder name>"
    )
    metric: Literal["auto", "mean_iou", "mean_dice", "mask_ap"] = Field(
        "auto",
        description="primary metric the gate compares (auto: mask_ap for instance models, "
        "mean_iou for semantic ones); per-image values feed the bootstrap",
    )
    min_delta: float = Field(0.005, ge=0, description="primary-metric gain needed over champion")
    confidence: float = Field(0.95, gt=0, lt=1, description="paired bootstrap confidence")
    max_class_drop: float = Field(
        0.02, ge=0, description="largest per-class drop of the primary metric allowed"
    )
    bootstrap_samples: int = Field(2000, ge=100)
    seed: int = 0


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)  # built on use: it reads the registry
    shapes: ShapesConfig = ShapesConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    predict: PredictConfig = PredictConfig()
    validation: ValidationConfig = ValidationConfig()
    versioning: VersioningConfig = VersioningConfig()
    tracking: TrackingConfig = TrackingConfig()
    promotion: PromotionConfig = PromotionConfig()

    @model_validator(mode="before")
    @classmethod
    def _name_after_dataset(cls, raw: Any) -> Any:
        """`promotion.model_name: auto` becomes `segops-<dataset folder>`: a new dataset never
        lands under another dataset's registered name (and its champion's classes)."""
        if not isinstance(raw, dict):
            return raw
        promo, data = raw.get("promotion") or {}, raw.get("data") or {}
        name = promo.model_name if isinstance(promo, PromotionConfig) else promo.get("model_name")
        if name not in (None, "auto"):
            return raw
        root = data.root if isinstance(data, DataConfig) else data.get("root", DataConfig().root)
        derived = registered_name_for(root)
        if isinstance(promo, PromotionConfig):
            return {**raw, "promotion": promo.model_copy(update={"model_name": derived})}
        return {**raw, "promotion": {**promo, "model_name": derived}}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (paths as strings, tuples as lists)."""
        return self.model_dump(mode="json")


def dataset_slug(root: str | Path) -> str:
    """A registry-friendly name for a dataset folder: `data/My Scans` -> `my-scans`."""
    path = Path(root)
    name = path.resolve().name if path.name in ("", ".", "..") else path.name
    return re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-.") or "dataset"


def registered_name_for(root: str | Path) -> str:
    """The registered model name `promotion.model_name: auto` gives a dataset folder."""
    return f"segops-{dataset_slug(root)}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `train.epochs=3` into (["train", "epochs"], 3); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `a.b.c=value` override set (sections created if absent)."""
    merged = json.loads(json.dumps(raw, default=str))
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return merged


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        got = f" (got {err['input']!r})" if err["type"] != "missing" else ""
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}': remove it or check its spelling")
        else:
            lines.append(f"{source}: {key}: {err['msg']}{got}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def build_config(raw: dict[str, Any] | None, source: str = "params") -> Config:
    """Validate a raw dict into a `Config`; errors name the key and the source."""
    try:
        return Config.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read `params.yaml` (if given and present), apply overrides, validate."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such params file (pass --params or create it)")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        source = str(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
        source += " + --set"
    return build_config(raw, source)


# Keys that say where things live or how fast they load, not what is trained: a run moved to
# another folder, or restored into a fresh workspace, keeps its config hash.
LOCATION_KEYS = (
    ("data", "root"),
    ("data", "cache"),
    ("train", "out_dir"),
    ("train", "threads"),  # how fast, not what: a run keeps its hash on a busier machine
    ("validation", "report_dir"),
    ("versioning", "path"),
    ("versioning", "remote"),
    ("versioning", "remote_url"),
    ("versioning", "push"),
    ("tracking", "uri"),
    ("tracking", "artifact_root"),
    ("tracking", "experiment"),
)


def config_hash(config: Config) -> str:
    """sha256 of the resolved config's JSON without `LOCATION_KEYS` (train.distributed: world)."""
    data = config.to_dict()
    data.pop("promotion")  # the gate decides about a model; it does not shape it
    data.pop("predict")  # how a trained model is scored; it does not shape it
    for section, key in LOCATION_KEYS:
        data[section].pop(key)
    dist = data["train"].pop("distributed")  # rank, endpoint, backend, restarts: how ranks meet
    if (world := [dist["nproc_per_node"], dist["nnodes"]]) != [1, 1]:  # else the earlier hash
        data["train"]["world_size"] = world[0] * world[1] if world[0] != "auto" else world
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (readable, and loadable with `load_config`)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
