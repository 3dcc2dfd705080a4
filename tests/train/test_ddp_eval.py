"""Sharded validation over 2 gloo ranks (torchrun) equals one process bit for bit, for an odd
number of images: the semantic confusion-matrix metrics and loss, and the instance metrics
from gathered predictions. Run as a script, this file is the ranks' program."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from segops.train.distributed import SINGLE, World, ordered, shard_batches

CLASSES = ["background", "square"]


@pytest.mark.parametrize(("count", "batch", "size"), [(9, 2, 2), (9, 4, 2), (5, 1, 3), (1, 2, 2)])
def test_shards_cover_every_sample_once_in_whole_batches(count, batch, size):
    shards = [shard_batches(count, batch, World(rank, size)) for rank in range(size)]
    flat = [i for batches in shards for b in batches for i in b]
    assert sorted(flat) == list(range(count))  # nothing padded, nothing twice
    assert [b for batch_ in ordered(shards) for b in batch_] == list(range(count))
    assert shard_batches(count, batch, SINGLE) == ordered(shards)  # one process's batches


class Squares(Dataset):
    """`n` 32x32 images with one bright square each; instance targets as InstanceDataset's."""

    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(5)
        self.items = []
        for _ in range(n):
            image = rng.uniform(0, 0.4, (3, 32, 32)).astype(np.float32)
            y, x, r = (int(v) for v in rng.integers(4, 20, 3))
            mask = np.zeros((1, 32, 32), np.uint8)
            mask[0, y : y + r // 2 + 4, x : x + r // 2 + 4] = 1
            image[:, mask[0] == 1] = 0.9
            ys, xs = np.nonzero(mask[0])
            box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
            self.items.append(
                (
                    torch.from_numpy(image),
                    {"boxes": box, "labels": np.ones(1, np.int64), "masks": mask},
                )
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class ThresholdDetector(nn.Module):
    """A deterministic stand-in for Mask R-CNN's eval output: one instance per image, the
    pixels above a threshold, scored by their mean brightness."""

    def __init__(self) -> None:
        super().__init__()
        self.level = nn.Parameter(torch.tensor(0.7))

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for im in images:
            mask = (im[0] > self.level).float()[None, None]
            out.append(
                {
                    "masks": mask,
                    "labels": torch.ones(1, dtype=torch.int64),
                    "scores": im.mean().reshape(1),
                    "boxes": torch.tensor([[0.0, 0.0, 32.0, 32.0]]),
                }
            )
        return out


def _instance_metrics(world: World) -> dict[str, float]:
    from segops.train.instance_eval import evaluate_instance

    val = evaluate_instance(ThresholdDetector(), Squares(9), CLASSES, batch_size=2, world=world)
    return {k: val[k] for k in ("AP", "AP50", "AR", "mean_iou", "pixel_accuracy")}


def _semantic_metrics(config: Path, world: World) -> dict[str, float]:
    from segops.config import load_config
    from segops.data.manifest import load_dataset
    from segops.train.device import resolve_runtime
    from segops.train.fit import seed_everything
    from segops.train.semantic import SemanticTask

    cfg = load_config(config)
    info = load_dataset(cfg.data, eval_split="val", write_splits=False)
    runtime = resolve_runtime(cfg.train)
    seed_everything(0)  # the same initial weights in every rank and in the single run
    task = SemanticTask(cfg, info)
    setup = task.build(runtime, 1, world)
    return {"val_images": setup.val_images, **task.validate(setup.model, runtime, world)}


def _rank_main(config: Path, out: Path) -> None:
    from segops.train.distributed import close_world, init_world

    world = init_world("gloo", "cpu")
    found = {"semantic": _semantic_metrics(config, world), "instance": _instance_metrics(world)}
    if world.is_main:
        found["single"] = {
            "semantic": _semantic_metrics(config, SINGLE),
            "instance": _instance_metrics(SINGLE),
        }
        out.write_text(json.dumps(found))
    close_world(world)


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone` with one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_sharded_validation_equals_one_process_exactly(tmp_path):
    from segops.config import load_config, save_config
    from segops.data.manifest import load_dataset
    from segops.data.shapes import generate_shapes

    root = generate_shapes(tmp_path / "data", n=15, size=32, seed=3)
    extra = ["data.val_fraction=0.6", "evaluate.batch_size=2", "model.options={width: 4, depth: 2}"]
    cfg = load_config(None, [f"data.root={root}", "data.image_size=32", *extra])
    assert len(load_dataset(cfg.data, eval_split="val").split("val")) % 2 == 1  # odd
    save_config(cfg, tmp_path / "config.yaml")
    done = torchrun(__file__, str(tmp_path / "config.yaml"), str(tmp_path / "found.json"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads((tmp_path / "found.json").read_text())
    assert found["semantic"] == found["single"]["semantic"]  # floats compared with ==
    assert found["instance"] == found["single"]["instance"]
    assert found["semantic"]["val_images"] % 2 == 1
    assert 0 < found["instance"]["AP"] <= 1  # the metrics are real numbers, not NaN


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]), Path(sys.argv[2]))
