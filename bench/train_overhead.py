"""Overhead of the segops training loop against a minimal plain PyTorch loop.

Same model (from the same initial weights), same pre-collated batches, same device, run
interleaved in one process (plain, segops, plain, segops, ...) so machine noise hits both
alike. Prints images/s of each, their ratio (goal: >= 0.95), and the DataLoader's images/s
alone (decode + augment + collate, no model).

    python bench/train_overhead.py [--rounds 5] [--images 256] [--size 64] [--batch 16]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from segops.config import load_config
from segops.data.manifest import load_dataset
from segops.data.shapes import generate_shapes
from segops.models import build_model
from segops.train.callbacks import CallbackList
from segops.train.device import resolve_runtime
from segops.train.loop import make_loaders, train_one_epoch
from segops.train.losses import build_loss
from segops.train.schedule import build_scheduler


def plain_epoch(model, batches, optimizer, device) -> float:
    """The baseline: the smallest correct loop. Returns seconds."""
    model.train()
    start = time.perf_counter()
    for images, masks in batches:
        images, masks = images.to(device), masks.to(device)
        loss = F.cross_entropy(model(images), masks, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def segops_epoch(model, batches, optimizer, runtime, steps) -> float:
    """segops' `train_one_epoch` with its schedule, scaler and a (no-op) callback list."""
    scheduler = build_scheduler(optimizer, steps, 0, "cosine")
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.use_scaler)
    criterion = build_loss("ce", None).to(runtime.device)
    fit = train_one_epoch(
        model, batches, criterion, optimizer, scheduler, scaler, runtime, callbacks=CallbackList([])
    )
    return fit["seconds"]


def loader_images_per_s(loader, epochs: int = 2) -> float:
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for images, _ in loader:
            seen += len(images)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate_shapes(tmp, n=args.images, size=args.size, seed=0)
        cfg = load_config(
            "params.yaml",
            [
                f"data.root={tmp}",
                f"data.image_size={args.size}",
                f"train.batch_size={args.batch}",
                "data.val_fraction=0.1",
            ],
        )
        info = load_dataset(cfg.data, write_splits=False)
        runtime = resolve_runtime(cfg.train)
        loader, _, _ = make_loaders(cfg, info, runtime)
        loader_ips = loader_images_per_s(loader)
        batches = list(loader)  # both loops see exactly these batches
    torch.manual_seed(0)
    base = build_model(cfg.model.name, num_classes=info.num_classes, **cfg.model.options)
    images = sum(len(b[0]) for b in batches)
    results = {"plain": [], "segops": []}
    models = {k: copy.deepcopy(base).to(runtime.device) for k in results}
    optims = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}
    plain_epoch(models["plain"], batches[:2], optims["plain"], runtime.device)  # warm-up
    for _ in range(args.rounds):
        results["plain"].append(
            images / plain_epoch(models["plain"], batches, optims["plain"], runtime.device)
        )
        results["segops"].append(
            images
            / segops_epoch(models["segops"], batches, optims["segops"], runtime, len(batches))
        )
    plain, ours = statistics.median(results["plain"]), statistics.median(results["segops"])
    print(f"device: {runtime.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"model {cfg.model.name} {cfg.model.options}, {images} images of {args.size}px, "
        f"batch {args.batch}, {args.rounds} interleaved rounds (median)"
    )
    print(f"plain PyTorch loop : {plain:8.1f} images/s  {[round(x, 1) for x in results['plain']]}")
    print(f"segops loop        : {ours:8.1f} images/s  {[round(x, 1) for x in results['segops']]}")
    print(f"ratio segops/plain : {ours / plain:8.3f}   (goal >= 0.95)")
    print(f"data loader alone  : {loader_ips:8.1f} images/s")


if __name__ == "__main__":
    main()
