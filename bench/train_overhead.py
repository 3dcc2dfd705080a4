"""The segops training loop as users run it, against a plain PyTorch loop on the same data.

segops: `SemanticTask(cfg, info).build(...)` and `run_epoch` exactly as `fit` runs an epoch
(its DataLoader over the real dataset path, per-epoch reseeded shuffling, the default loss
`train.loss`, schedule, scaler, autocast and channels-last as `resolve_runtime` decides, the
per-step loss sync and callbacks). plain: the smallest correct loop, a `DataLoader(shuffle=True)`
over the same dataset object (same decoding, cache and augmentation), the same loss module,
AdamW with the same settings, from the same initial weights; fp32, contiguous.

Method: one warm-up epoch each (fills the decode cache, allocator, kernels); then rounds of
one epoch each, the order alternating (plain first in even rounds, segops first in odd ones);
per round the paired ratio plain_seconds / segops_seconds (= segops' images/s over plain's);
the median, min and max of those ratios are reported (goal: median >= 0.98). On CUDA each
timing is bracketed by `torch.cuda.synchronize()`. Both loops run in one process with the
thread count `train.threads` gives.

    python bench/train_overhead.py [--rounds 6] [--images 256] [--size 64] [--batch 8]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from segops.config import load_config
from segops.data.manifest import load_dataset
from segops.data.shapes import generate_shapes
from segops.train.callbacks import CallbackList
from segops.train.device import resolve_runtime
from segops.train.fit import run_epoch
from segops.train.semantic import SemanticTask


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_epoch(model, loader, criterion, optimizer, device) -> float:
    """The baseline: the smallest correct loop over `loader`. Returns seconds."""
    model.train()
    _sync(device)
    start = time.perf_counter()
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)
        loss = criterion(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return time.perf_counter() - start


def segops_epoch(task, setup, runtime, epoch: int) -> float:
    """One epoch as `fit` runs it (reseeded shuffling, run_epoch with a callback list)."""
    setup.generator.manual_seed(epoch)
    _sync(runtime.device)
    start = time.perf_counter()
    optim = (setup.optimizer, setup.scheduler, setup.scaler)
    cbs = CallbackList([])
    run_epoch(
        setup.model, setup.loader, task.batch_loss, *optim, runtime, epoch=epoch, callbacks=cbs
    )
    _sync(runtime.device)
    return time.perf_counter() - start


def build(args, root: str):
    cfg = load_config(
        "params.yaml",
        [
            f"data.root={root}",
            f"data.image_size={args.size}",
            f"train.batch_size={args.batch}",
            f"train.epochs={args.rounds + 1}",
            "data.val_fraction=0.1",
        ],
    )
    info = load_dataset(cfg.data, eval_split="val", write_splits=False)
    runtime = resolve_runtime(cfg.train)
    torch.manual_seed(0)
    task = SemanticTask(cfg, info)
    setup = task.build(runtime, args.rounds + 1)
    model = copy.deepcopy(setup.model).to(memory_format=torch.contiguous_format)
    plain = {
        "model": model,
        "loader": DataLoader(setup.loader.dataset, args.batch, shuffle=True, drop_last=True),
        "criterion": copy.deepcopy(task.criterion),
        "optimizer": torch.optim.AdamW(
            model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        ),
        "device": runtime.device,
    }
    return cfg, runtime, task, setup, plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate_shapes(tmp, n=args.images, size=args.size, seed=0)
        cfg, runtime, task, setup, plain = build(args, tmp)
        images = len(setup.loader) * args.batch
        plain_epoch(**plain)  # warm-up: decode cache, allocator, kernels
        segops_epoch(task, setup, runtime, 0)
        ratios, times = [], {"plain": [], "segops": []}
        for r in range(args.rounds):
            order = ("plain", "segops") if r % 2 == 0 else ("segops", "plain")
            for name in order:
                if name == "plain":
                    times["plain"].append(plain_epoch(**plain))
                else:
                    times["segops"].append(segops_epoch(task, setup, runtime, r + 1))
            ratios.append(times["plain"][-1] / times["segops"][-1])
    print(f"device {runtime.device}, torch {torch.__version__}, {runtime.describe()}")
    print(
        f"model {cfg.model.name} {cfg.model.options}, loss {cfg.train.loss}, {images} images/epoch "
        f"of {args.size}px, batch {args.batch}, num_workers {cfg.data.num_workers}, "
        f"{args.rounds} alternating rounds after one warm-up epoch each"
    )
    for name, secs in times.items():
        ips = [round(images / s, 1) for s in secs]
        print(f"{name:<7} images/s per round: {ips}")
    print(f"paired ratios segops/plain: {[round(x, 3) for x in ratios]}")
    print(
        f"median {statistics.median(ratios):.3f}  min {min(ratios):.3f}  max {max(ratios):.3f}"
        "   (goal: median >= 0.98)"
    )


if __name__ == "__main__":
    main()
