import shutil

import pandas as pd
import pytest
import torch
from conftest import tiny_config

from segops.errors import CheckpointError, ConfigError
from segops.train.callbacks import Callback
from segops.train.checkpoint import load_checkpoint
from segops.train.loop import train


class Crash(Callback):
    """Simulates a crash (power cut, OOM kill) right after epoch `after` was checkpointed."""

    def __init__(self, after: int) -> None:
        self.after = after

    def on_epoch_end(self, row):
        if row["epoch"] == self.after:
            raise KeyboardInterrupt("simulated crash")


class Record(Callback):
    def __init__(self):
        self.events = []

    def on_train_start(self, info):
        self.events.append(("start", info["start_epoch"]))

    def on_step(self, epoch, step, steps, loss):
        self.events.append(("step", epoch, step))

    def on_epoch_end(self, row):
        self.events.append(("epoch", row["epoch"]))

    def on_checkpoint(self, path, is_best):
        self.events.append(("ckpt", path.name, is_best))


def test_training_writes_checkpoints_history_and_reports(shapes_root, tmp_path):
    rec = Record()
    result = train(tiny_config(shapes_root, tmp_path / "run"), callbacks=[rec])
    out = tmp_path / "run"
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2] and history["train_loss"].notna().all()
    # The best epoch is the first with the highest val mean IoU, and best.pt holds it.
    best_row = history.loc[history["val_miou"].idxmax()]
    assert (result.best_epoch, result.best_miou) == (best_row["epoch"], best_row["val_miou"])
    assert load_checkpoint(out / "checkpoints" / "best.pt")["state"]["epoch"] == result.best_epoch
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["config"]["train"]["epochs"] == 2 and ckpt["dataset_hash"] == result.dataset_hash
    assert ckpt["classes"][0] == "background" and ckpt["state"]["epoch"] == 2
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "scaler", "rng", "config_hash"}
    assert (out / "config.yaml").is_file()
    steps = [e for e in rec.events if e[0] == "step"]
    assert rec.events[0] == ("start", 1) and len(steps) == 2 * 3  # 30 train images, batch 8
    assert ("ckpt", "best.pt", True) in rec.events


def _weights(path):
    return load_checkpoint(path)["model"]


def test_resume_after_a_crash_gives_identical_weights(shapes_root, tmp_path):
    straight = tmp_path / "straight"
    train(tiny_config(shapes_root, straight, "train.epochs=3"))
    crashed = tmp_path / "crashed"
    cfg = tiny_config(shapes_root, crashed, "train.epochs=3")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[Crash(after=1)])
    assert load_checkpoint(crashed / "checkpoints" / "last.pt")["state"]["epoch"] == 1
    rec = Record()
    train(cfg, resume=True, callbacks=[rec])
    assert rec.events[0] == ("start", 2)
    a, b = _weights(straight / "checkpoints/last.pt"), _weights(crashed / "checkpoints/last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history_a = pd.read_csv(straight / "history.csv").drop(columns=["seconds", "images_per_s"])
    history_b = pd.read_csv(crashed / "history.csv").drop(columns=["seconds", "images_per_s"])
    pd.testing.assert_frame_equal(history_a, history_b)


def test_resume_refuses_another_config_or_dataset(shapes_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(shapes_root, out, "train.epochs=1"))
    with pytest.raises(CheckpointError, match=r"different config .*train without --resume"):
        train(tiny_config(shapes_root, out, "train.epochs=1", "train.lr=0.1"), resume=True)
    other = tmp_path / "other"
    shutil.copytree(shapes_root, other)
    (other / "masks" / "00000.png").write_bytes((other / "masks" / "00001.png").read_bytes())
    shutil.copyfile(shapes_root / "images" / "00001.png", other / "images" / "00000.png")
    with pytest.raises(CheckpointError, match="different dataset"):
        train(tiny_config(other, out, "train.epochs=1"), resume=True)


def test_corrupt_checkpoint_is_detected(shapes_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(shapes_root, out, "train.epochs=1"))
    last = out / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        train(tiny_config(shapes_root, out, "train.epochs=1"), resume=True)


def test_bf16_autocast_path_runs_on_cpu(shapes_root, tmp_path):
    # The same AMP code path used on GPUs: autocast to bfloat16 (no scaler needed).
    result = train(
        tiny_config(
            shapes_root,
            tmp_path / "run",
            "train.amp=bf16",
            "train.loss=ce_dice",
            "train.class_weights=balanced",
            "train.grad_clip=1.0",
            "train.channels_last=true",
        )
    )
    history = pd.read_csv(result.history_csv)
    assert history["train_loss"].notna().all() and (history["train_loss"] < 5).all()


def test_early_stopping(shapes_root, tmp_path):
    # lr 0 never improves after epoch 1, so patience 1 stops after epoch 2.
    cfg = tiny_config(
        shapes_root,
        tmp_path / "run",
        "train.epochs=6",
        "train.lr=1e-12",
        "train.early_stopping_patience=1",
        "train.warmup_epochs=0",
    )
    result = train(cfg)
    assert result.stopped_early and result.epochs_run == 2 and result.best_epoch == 1


def test_class_weights_must_match_classes(shapes_root, tmp_path):
    cfg = tiny_config(shapes_root, tmp_path / "run", "train.class_weights=[1, 2]")
    with pytest.raises(ConfigError, match="2 values but the dataset has 5 classes"):
        train(cfg)


def test_cuda_requested_without_gpu_is_a_clear_error(shapes_root, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        train(tiny_config(shapes_root, tmp_path / "run", "train.device=cuda"))


def test_deterministic_mode_is_applied_and_reproducible(shapes_root, tmp_path):
    try:
        a = train(
            tiny_config(shapes_root, tmp_path / "a", "train.epochs=1", "train.deterministic=true")
        )
        assert torch.are_deterministic_algorithms_enabled()
        b = train(
            tiny_config(shapes_root, tmp_path / "b", "train.epochs=1", "train.deterministic=true")
        )
    finally:
        torch.use_deterministic_algorithms(False)
    wa, wb = _weights(a.last_checkpoint), _weights(b.last_checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
