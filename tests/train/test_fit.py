"""`fit` drives both kinds alike: early stopping, atomic history.csv and the non-finite loss
check hold for a semantic U-Net and for Mask R-CNN (tiny data, CPU)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from conftest import tiny_config
from train.test_instance_train import TinyInstances
from train.test_instance_train import _config as instance_config
from train.test_loop import Record

from segops.train.checkpoint import load_checkpoint
from segops.train.fit import check_finite, write_history
from segops.train.instance import InstanceTask, train_instance
from segops.train.loop import train
from segops.train.semantic import SemanticTask
from segops.train.state import RunState, is_improvement, record_epoch, should_stop

KINDS = ["semantic", pytest.param("instance", marks=pytest.mark.slow)]


def _train(kind: str, shapes_root, out, *extra: str, callbacks=()):
    """Train a tiny model of `kind` into `out` (instance: 2 training images, 1 step an epoch)."""
    if kind == "semantic":
        return train(tiny_config(shapes_root, out, *extra), callbacks=callbacks)
    cfg = instance_config(out.parent / "unused", out, *extra)
    return train_instance(cfg, TinyInstances(2), TinyInstances(1, seed=1), callbacks=callbacks)


@pytest.mark.parametrize(
    ("score", "best_score", "best_epoch", "expected"),
    [
        (0.1, -1.0, 0, True),  # the first epoch always counts
        (math.nan, -1.0, 0, True),  # even without a score
        (0.5, 0.4, 1, True),
        (0.4, 0.4, 1, False),  # a tie keeps the earlier epoch
        (0.3, 0.4, 2, False),
        (math.nan, 0.0, 1, False),  # NaN counts as -1
        (0.0, -1.0, 1, True),  # any real score beats an epoch without one
    ],
)
def test_is_improvement(score, best_score, best_epoch, expected):
    assert is_improvement(score, best_score, best_epoch) is expected


@pytest.mark.parametrize(
    ("bad_epochs", "patience", "expected"),
    [(0, None, False), (9, None, False), (0, 1, False), (1, 1, True), (2, 3, False), (3, 3, True)],
)
def test_should_stop(bad_epochs, patience, expected):
    assert should_stop(bad_epochs, patience) is expected


def test_record_epoch_tracks_best_and_epochs_without_improvement():
    state = RunState()
    scores = [0.2, 0.5, 0.5, 0.4, 0.6]
    improved = [record_epoch(state, {"epoch": e, "s": s}, "s") for e, s in enumerate(scores, 1)]
    assert improved == [True, True, False, False, True]
    assert (state.best_epoch, state.best_score, state.bad_epochs) == (5, 0.6, 0)
    assert [row["epoch"] for row in state.history] == [1, 2, 3, 4, 5]
    assert record_epoch(state, {"epoch": 6, "s": math.nan}, "s") is False
    assert (state.best_epoch, state.bad_epochs) == (5, 1)


def test_run_state_is_saved_under_the_task_score_name():
    state = RunState(epoch=3, history=[{"epoch": 3}], best_score=0.7, best_epoch=2, bad_epochs=1)
    saved = state.to_dict("best_miou")
    assert saved == {
        "epoch": 3,
        "history": [{"epoch": 3}],
        "best_miou": 0.7,
        "best_epoch": 2,
        "bad_epochs": 1,
    }
    assert RunState.from_dict(saved, "best_miou") == state
    older = {"epoch": 2, "history": [], "best_ap": 0.3, "best_epoch": 1}  # before bad_epochs
    assert RunState.from_dict(older, "best_ap") == RunState(2, [], 0.3, 1, 0)


def test_check_finite_names_the_step_and_what_to_do():
    check_finite(0.25, 1, 1)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(FloatingPointError, match=r"epoch 3 step 7: loss is .*train\.lr"):
            check_finite(bad, 3, 7)


def test_write_history_replaces_the_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "history.csv"
    write_history([{"epoch": 1, "loss": 0.5}], path)
    _tear_csv_writes(monkeypatch, rows=2)
    with pytest.raises(OSError, match="disk full"):
        write_history([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4}], path)
    assert pd.read_csv(path).to_dict("records") == [{"epoch": 1, "loss": 0.5}]


def _tear_csv_writes(monkeypatch, rows: int) -> None:
    """Make writing a frame of `rows` rows stop half-way (disk full, power cut)."""
    real = pd.DataFrame.to_csv

    def torn(self, path=None, *args, **kwargs):
        if len(self) == rows:
            text = real(self, None, *args, **kwargs)
            with open(path, "w") as fh:
                fh.write(text[: len(text) // 2])
            raise OSError("disk full")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", torn)


@pytest.mark.parametrize("kind", KINDS)
def test_early_stopping(kind, shapes_root, tmp_path):
    """A learning rate of ~0 never improves on epoch 1, so patience 1 stops after epoch 2."""
    extra = ("train.epochs=4", "train.lr=1e-12", "train.warmup_epochs=0")
    out = tmp_path / "run"
    result = _train(kind, shapes_root, out, *extra, "train.early_stopping_patience=1")
    assert result.stopped_early and result.epochs_run == 2 and result.best_epoch == 1
    assert list(pd.read_csv(result.history_csv)["epoch"]) == [1, 2]
    assert load_checkpoint(result.last_checkpoint)["state"]["bad_epochs"] == 1
    assert load_checkpoint(result.best_checkpoint)["state"]["epoch"] == 1
    assert result.score_key == ("val_miou" if kind == "semantic" else "val_AP")


@pytest.mark.parametrize("kind", KINDS)
def test_a_torn_history_write_leaves_the_last_whole_history(
    kind, shapes_root, tmp_path, monkeypatch
):
    """Writing epoch 2's history fails half-way: history.csv still holds epoch 1, whole, and
    agrees with checkpoints/last.pt."""
    out = tmp_path / "run"
    _tear_csv_writes(monkeypatch, rows=2)
    with pytest.raises(OSError, match="disk full"):
        _train(kind, shapes_root, out, "train.epochs=2")
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1] and history["train_loss"].notna().all()
    assert list(history.columns[-3:]) == ["lr", "seconds", "images_per_s"]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["state"]["epoch"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_non_finite_loss_stops_before_the_step(kind, shapes_root, tmp_path, monkeypatch):
    """A NaN loss (the model's real forward pass, times NaN) is refused at the first step:
    nothing is stepped, reported or checkpointed."""
    task = SemanticTask if kind == "semantic" else InstanceTask
    real = task.batch_loss

    def nan_loss(self, model, batch, runtime):
        loss, images = real(self, model, batch, runtime)
        return loss * math.nan, images

    monkeypatch.setattr(task, "batch_loss", nan_loss)
    record, out = Record(), tmp_path / "run"
    with pytest.raises(FloatingPointError, match="epoch 1 step 1: loss is nan"):
        _train(kind, shapes_root, out, "train.epochs=1", callbacks=[record])
    assert record.events == [("start", 1)]
    assert not (out / "history.csv").exists()
    assert not (out / "checkpoints" / "last.pt").exists()
