"""Training under torchrun on CPU (gloo), with a model without BatchNorm (`ddp_test_fcn`,
registered here) and no augmentation, so that the ranks' arithmetic is the single process's:

- two launchers with --nnodes=2 and a c10d rendezvous on 127.0.0.1 train one 2-rank run;
- a rank killed with SIGKILL mid-epoch: torchrun restarts the group, every rank resumes from
  last.pt, and the final weights equal those of the uninterrupted run;
- 2 ranks x batch 4 against 1 process x batch 8: the loss curves agree (tolerance below).

Run as a script under torchrun, this file is the ranks' program: it registers the model, adds
a callback that kills rank 0 at `epoch:step` on the first attempt, and runs the worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from segops.config import Config, load_config, save_config
from segops.train.callbacks import Callback
from segops.train.checkpoint import load_checkpoint

MODEL = "ddp_test_fcn"
# Each process sums a different split of the same numbers (the all-reduce adds two rank means;
# one process averages 8 images at once), so float32 rounding (~1e-7 relative per operation)
# compounds over 8 AdamW steps; 1e-4 relative is far above that and far below any real
# difference (a BatchNorm model differs in the first decimal).
RTOL = 1e-4


def plain_fcn(*, num_classes: int, pretrained: str | None = None, width: int = 8) -> nn.Module:
    """Three convolutions, no normalisation layer: ranks compute what one process does."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, num_classes, 1),
    )


def register_test_model() -> None:
    from segops.models.registry import register_model

    with contextlib.suppress(ValueError):  # registered already in this process
        register_model(MODEL, "three convolutions without BatchNorm (DDP tests)")(plain_fcn)


class KillAt(Callback):
    """SIGKILL this process after step `step` of epoch `epoch`, once (the marker says so)."""

    def __init__(self, epoch: int, step: int, marker: Path) -> None:
        self.at, self.marker = (epoch, step), marker

    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        if (epoch, step) == self.at and not self.marker.exists():
            self.marker.write_text(f"killed at epoch {epoch} step {step} of {steps}\n")
            os.kill(os.getpid(), signal.SIGKILL)


def ddp_config(root: Path, out: Path, *extra: str) -> Config:
    return load_config(
        None,
        [
            f"data.root={root}",
            "data.image_size=32",
            "data.val_fraction=0.25",  # 16 train, 5 val images
            f"model.name={MODEL}",
            "train.loss=ce",  # a mean over pixels: the mean of the ranks' means
            "train.epochs=2",
            "train.batch_size=4",
            "train.lr=0.01",
            "train.warmup_epochs=0.5",
            "train.device=cpu",
            "train.deterministic=true",
            "train.threads=1",  # runs compared bit for bit: not `auto`, which follows the load
            "augment.hflip=0",
            "augment.vflip=0",
            "augment.color_jitter=0",
            "augment.scale=[1.0, 1.0]",
            "evaluate.batch_size=2",
            f"train.out_dir={out}",
            *extra,
        ],
    )


def rank_command(config: Path, *torchrun_args: str, kill_at: str = "") -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args, __file__, str(config)]
    return cmd + ([kill_at] if kill_at else [])


def run_ranks(config: Path, *torchrun_args: str, kill_at: str = "") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = rank_command(config, *torchrun_args, kill_at=kill_at)
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: `finish` can stop the ranks too
    )


def finish(proc: subprocess.Popen, timeout: int = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGUSR1)  # the ranks print their stacks (faulthandler)
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun ran past {timeout} s:\n{out[-6000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from segops.data.shapes import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("ddp") / "data", n=21, size=32, seed=3)


@pytest.fixture(scope="module")
def two_nodes(dataset) -> Path:
    """The reference 2-rank run, made by two launchers (--nnodes=2, 1 process each) meeting at
    a c10d rendezvous on 127.0.0.1; its output folder."""
    from servers import free_port  # here: torchrun runs this file without tests/ on sys.path

    out = dataset.parent / "two_nodes"
    config = dataset.parent / "two_nodes.yaml"
    save_config(ddp_config(dataset, out), config)
    port = free_port()
    common = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d"]
    common += [f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=segops-test"]
    nodes = [run_ranks(config, *common, f"--node-rank={rank}") for rank in (0, 1)]
    for node in nodes:
        finish(node)
    return out


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoints" / "last.pt")["model"]


@pytest.mark.slow
def test_two_nodes_train_one_run_together(two_nodes):
    history = pd.read_csv(two_nodes / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert (history["images_per_s"] > 0).all()
    result = (two_nodes.parent / "result.json").read_text()
    assert '"epochs_run": 2' in result  # rank 0's result, written by one of the two nodes


@pytest.mark.slow
def test_killed_rank_restarts_the_group_and_ends_with_the_same_weights(dataset, two_nodes):
    out = dataset.parent / "killed"
    config = dataset.parent / "killed.yaml"
    save_config(ddp_config(dataset, out), config)
    # one restart is enough (a restarted round joins with its own store prefix:
    # segops.train.distributed.init_world; docs/development.md)
    args = ["--standalone", "--nproc-per-node=2", "--max-restarts=1"]
    log = finish(run_ranks(config, *args, kill_at="2:1"))
    assert "killed at epoch 2 step 1 of 2" in (out / "killed.marker").read_text()
    assert "exitcode: -9" in log  # torchrun saw the SIGKILL, and restarted the group
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [1, 2]
    reference, resumed = weights(two_nodes), weights(out)
    assert reference.keys() == resumed.keys()
    for name, tensor in reference.items():
        assert torch.equal(tensor, resumed[name]), name  # bit for bit on CPU


@pytest.mark.slow
def test_two_ranks_of_4_follow_the_loss_curve_of_one_process_of_8(dataset, two_nodes):
    from segops.train.run import train_configured

    register_test_model()
    single = train_configured(ddp_config(dataset, dataset.parent / "one", "train.batch_size=8"))
    one, two = pd.read_csv(single.history_csv), pd.read_csv(two_nodes / "history.csv")
    for column in ("train_loss", "val_loss", "val_pixel_acc"):
        assert one[column].tolist() == pytest.approx(two[column].tolist(), rel=RTOL), column
    assert one["train_loss"].iloc[0] != one["train_loss"].iloc[1]  # it trained


@pytest.mark.slow
def test_mask_rcnn_trains_under_ddp_through_the_cli(tmp_path):
    """`segops train --nproc 2` with Mask R-CNN: the instance path runs the same driver; its
    AP inputs are gathered from both ranks."""
    from segops.data.shapes import generate_shapes

    root = generate_shapes(tmp_path / "ds", n=9, size=64, seed=6, instances="folder")
    sets = [
        f"train.out_dir={tmp_path / 'run'}",
        "data.format=folder_instance",
        "data.image_size=64",
        "data.val_fraction=0.34",
        "model.name=maskrcnn_resnet50_fpn",
        "model.options={min_size: 64, max_size: 64, trainable_backbone_layers: 0}",
        "train.epochs=1",
        "train.batch_size=1",
        "train.lr=0.0005",
        "train.device=cpu",
        "evaluate.batch_size=1",
    ]
    flags = [f for s in sets for f in ("--set", s)]
    cmd = [sys.executable, "-m", "segops.cli.main", "train", "--nproc", "2", *flags]
    cmd += ["--dataset", str(root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["epoch"].tolist() == [1] and 0 <= history["val_AP"].iloc[0] <= 1
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert (
        best["kind"] == "instance"
        and "roi_heads.mask_predictor.mask_fcn_logits.weight" in best["model"]
    )
    assert (tmp_path / "run" / "distributed" / "result.json").is_file()  # rank 0's result


if __name__ == "__main__":
    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # a hung rank shows its stack on kill -USR1
    register_test_model()
    from segops.train.worker import main

    config, hooks = Path(sys.argv[1]), []
    if len(sys.argv) > 2:
        epoch, step = (int(v) for v in sys.argv[2].split(":"))
        out = load_config(config).train.out_dir
        hooks = [KillAt(epoch, step, Path(out) / "killed.marker")]
    raise SystemExit(main([str(config)], callbacks=hooks))
