"""What the retrain flow's steps hand each other: small frozen records.

Where a room already has its record the steps return it as it is (`Config`, `DataVersion`,
`ValidationReport`, `TrainResult`, `EvalReport`, `ModelRef`, `PromotionDecision`); the records
here only bundle one of them with what the step added (an MLflow run id, a path, a message).
Prefect passes them between tasks in process, untouched (no cache key is computed: every task
has `NO_CACHE`). Nothing here imports torch, MLflow or DVC: `flows/retrain.py` stays cheap to
import, and the types below are named for the reader only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segops.config import Config
    from segops.evaluate.outputs import EvalReport
    from segops.promotion.registry import ModelRef
    from segops.train.fit import TrainResult
    from segops.validation_report import ValidationReport

ONNX = "segops.onnx."


@dataclass(frozen=True)
class Contract:
    """What a registered model promises and a champion must share: kind, classes, channels."""

    kind: str  # "semantic" or "instance"
    classes: tuple[str, ...]
    channels: int


@dataclass(frozen=True)
class SourceState:
    """The code's git commit and whether the tree was dirty when the flow started."""

    commit: str
    dirty: bool


@dataclass(frozen=True)
class Validated:
    """The dataset's Great Expectations report and where its JSON was written."""

    report: ValidationReport
    json: str


@dataclass(frozen=True)
class Placed:
    """The config with `data.root` inside the versioned tree, and what placing it did."""

    config: Config
    message: str


@dataclass(frozen=True)
class Attempt:
    """The attempt a flow runs (fresh, or an interrupted one it continues), claimed."""

    attempt_key: str
    config: Config  # outputs under the attempt's folder
    resumed: str | None  # the adopted MLflow run id
    failed: tuple[str, ...]  # orphaned run ids marked FAILED
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Existing:
    """A registered version already made from the same data, config and code."""

    ref: ModelRef
    decided: bool  # went through the gate (a flow killed after register leaves it undecided)
    attempt_key: str
    out_dir: str
    checkpoint: str
    metrics: Mapping[str, float]  # the evaluation's headline figures copied to the version
    exported: bool = True  # has its segops.onnx.* tags (a flow killed after the gate has none)


@dataclass(frozen=True)
class Trained:
    """A training in its MLflow run."""

    run_id: str
    result: TrainResult

    @property
    def checkpoint(self) -> str:
        return self.result.best_checkpoint


@dataclass(frozen=True)
class Evaluated:
    """The evaluation the gate reads, and the `test` split's when there is one."""

    report: EvalReport
    test: EvalReport | None = None

    def to_dict(self) -> dict[str, Any]:
        """The `metrics` of the flow's result."""
        test = self.test
        return {
            "mean_iou": self.report.mean_iou,
            "dataset_hash": self.report.dataset_hash,
            "metrics_json": self.report.metrics_json,
            "plots": list(self.report.plots),
            "test": None
            if test is None
            else {"mean_iou": test.mean_iou, "metrics_json": test.metrics_json},
        }


@dataclass(frozen=True)
class Exported:
    """The `segops.onnx.*` tags set on the run: status ok, failed (with the error) or skipped."""

    tags: Mapping[str, str]

    @property
    def status(self) -> str:
        return self.tags.get(ONNX + "status", "")

    @property
    def error(self) -> str:
        return self.tags.get(ONNX + "error", "")


@dataclass(frozen=True)
class ModelReport:
    """The version's HTML report (its file and artifact link), or why there is none."""

    html: str | None
    link: str | None
    error: str | None

    def to_dict(self) -> dict[str, str | None]:
        return {"html": self.html, "link": self.link, "error": self.error}
