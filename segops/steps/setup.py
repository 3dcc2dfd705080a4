"""The flow's first steps, before anything is validated, versioned or trained: the attempt's
config, the stores answer, the registry's contract, the source tree's state."""

from __future__ import annotations

from pathlib import Path

from segops.config import Config, build_config
from segops.resume import at_dir
from segops.steps.records import Contract, SourceState
from segops.train.precheck import check_model_fast

# lazy imports: the flow module (and `segops run`, which imports it) must not pay for torch,
# MLflow, DVC and ONNX before a step runs (docs/development.md "Imports").


def with_outputs_in(cfg: Config, out_dir: str | Path) -> Config:
    """`cfg` with its outputs (checkpoints, eval, validation report) under `out_dir`."""
    return build_config(at_dir(cfg.to_dict(), out_dir), "pipeline config")


def attempt_config(cfg: Config, attempt_key: str) -> Config:
    """`cfg` with outputs under `runs/<attempt_key>/` (checkpoints, eval, validation).

    Refuses here, before the flow validates or versions anything, an unknown model, options
    it does not take, an instance model on data without instances and a promotion metric the
    model cannot have.
    """
    from segops.promotion.decide import check_metric

    check_metric(cfg.promotion.metric, check_model_fast(cfg))  # torch-free where it can be
    return with_outputs_in(cfg, Path(cfg.train.out_dir).parent / attempt_key)


def preflight_step(cfg: Config, workspace: str = ".") -> list[str]:
    """MLflow, the DVC remote and the Prefect API answer (seconds, before anything runs)."""
    from segops.preflight import check_stores

    return check_stores(cfg, workspace)


def registry_step(cfg: Config) -> Contract:
    """The model's contract (`kind`, `classes`, input `channels`); ConfigError when
    `promotion.model_name` already has a champion of the other model kind (semantic vs
    instance), of other classes or of another channel count: the gate could not compare
    them, so the flow stops here, before anything is validated, versioned, trained or
    registered."""
    from segops import tracking
    from segops.data.formats import read_layout
    from segops.data.io import IMAGE_CHANNELS
    from segops.promotion.compat import check_compatible
    from segops.train.run import model_kind

    tracking.connect(cfg.tracking)
    classes = read_layout(cfg.data.root, cfg.data.format, cfg.data).classes
    kind = model_kind(cfg)
    check_compatible(cfg.promotion.model_name, kind, classes, str(cfg.data.root), IMAGE_CHANNELS)
    return Contract(kind=kind, classes=tuple(classes), channels=IMAGE_CHANNELS)


def source_state(cfg: Config, workspace: str = ".") -> SourceState:
    """The code's git commit and whether the tree is dirty, read before the flow writes
    anything; the `.dvc` file the flow itself rewrites does not count."""
    from segops.tracking import git_state

    found = git_state(workspace, ignore=[f"{cfg.versioning.path}.dvc"])
    return SourceState(commit=found["commit"], dirty=found["dirty"] == "true")
