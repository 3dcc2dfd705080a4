"""What the score flow's steps (`segops.scoring.steps`) hand each other: small frozen records.

`Pinned` is the registered version that scores, `InputIdentity` the input it scored and
`ScoreSummary` what the job did (`segops.predict.PredictSummary`, as it is, plus the engine).
Prefect passes them between tasks in process, untouched (every task has `NO_CACHE`). Nothing
here imports torch or MLflow: `flows/score.py` stays cheap to import. `score_result` builds the
flow's return value, the one place its keys are spelled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segops.predict import PredictSummary


@dataclass(frozen=True)
class Pinned:
    """A registered version pinned by number (`segops.scoring.source.registered_source`):
    whether it was champion when pinned, and which version was."""

    model_uri: str  # models:/NAME/VERSION
    name: str
    version: str
    run_id: str
    requested: str  # what was asked for: a models:/ URI or a bare name (its champion)
    champion: bool
    champion_version: str | None  # None: the name has no champion
    tracking_uri: str  # where the version is registered (handed to Ray actors)

    @classmethod
    def from_source(cls, source: dict[str, Any]) -> Pinned:
        return cls(**{key: source[key] for key in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        """The model source (`segops.scoring.source`) that loads it, e.g. in `predict_job`."""
        return asdict(self)

    def warning(self) -> str | None:
        """What to say when the version is not the champion (scoring with it is allowed)."""
        if self.champion:
            return None
        return (
            f"{self.model_uri} is not the champion of {self.name} (v{self.champion_version} is);"
            " scoring with it anyway, and recording that"
        )


@dataclass(frozen=True)
class InputIdentity:
    """The input scored: its location, how it was hashed and the hash of its image listing."""

    input: str  # a resolved folder or an s3:// URL
    kind: str  # "listing" (a folder) or "s3-listing" (a prefix)
    hash: str  # sha256 of the images' names, sizes and mtimes or ETags
    images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScoreSummary:
    """What one scoring did (`PredictSummary`) and on which engine."""

    predicted: PredictSummary
    engine: str  # local | ray

    def to_dict(self) -> dict[str, Any]:
        """`PredictSummary.to_dict()` plus the engine."""
        return self.predicted.to_dict() | {"engine": self.engine}

    def line(self, model_uri: str, src: str, run_id: str) -> str:
        p = self.predicted
        return (
            f"{model_uri} scored {p.scored} images of {src} ({p.errors} unreadable, "
            f"{p.images_per_s:g} images/s); run {run_id}"
        )


def score_result(
    pinned: Pinned, identity: InputIdentity, summary: ScoreSummary, run_id: str
) -> dict[str, Any]:
    """The score flow's return value: `{"model", "input", "summary", "run_id"}`, plain dicts."""
    return {
        "model": pinned.to_dict(),
        "input": identity.to_dict(),
        "summary": summary.to_dict(),
        "run_id": run_id,
    }
