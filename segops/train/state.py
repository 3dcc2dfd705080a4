"""A run's progress between epochs, and the two decisions made on it after every epoch: is
this the best epoch so far (best.pt), and has training stopped improving (early stopping)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunState:
    """What a checkpoint restores besides the model and optimiser."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = -1.0  # best validation score so far (NaN counts as -1)
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best, for early stopping

    def to_dict(self, score_name: str) -> dict[str, Any]:
        """As checkpoints store it: the best score named `score_name` (e.g. `best_miou`)."""
        return {
            "epoch": self.epoch,
            "history": self.history,
            score_name: self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
        }

    @classmethod
    def from_dict(cls, saved: dict[str, Any], score_name: str) -> RunState:
        """The state `to_dict` saved; checkpoints written before early stopping applied to
        every kind have no `bad_epochs` (counted from 0 again)."""
        fields = {k: v for k, v in saved.items() if k != score_name}
        return cls(best_score=saved[score_name], **fields)


def comparable(score: float) -> float:
    """`score`, or -1 for NaN (a metric without ground truth) so that any real score beats it."""
    return -1.0 if math.isnan(score) else float(score)


def is_improvement(score: float, best_score: float, best_epoch: int) -> bool:
    """True when `score` beats the best so far (ties do not); the first epoch always counts."""
    return best_epoch == 0 or comparable(score) > best_score


def should_stop(bad_epochs: int, patience: int | None) -> bool:
    """Early stopping: `patience` epochs in a row without improvement (None: never stop)."""
    return patience is not None and bad_epochs >= patience


def record_epoch(state: RunState, row: dict[str, Any], score_key: str) -> bool:
    """Append `row` to `state` and update its best epoch and count of epochs without
    improvement on `row[score_key]`; returns whether the epoch is the best so far."""
    state.history.append(row)
    improved = is_improvement(row[score_key], state.best_score, state.best_epoch)
    if improved:
        state.best_score, state.best_epoch = comparable(row[score_key]), row["epoch"]
        state.bad_epochs = 0
    else:
        state.bad_epochs += 1
    return improved
