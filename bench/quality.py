"""Quality at native resolution: segops against a plain PyTorch loop, and the `segops plan`
recipe against both, on one dataset whose images are larger than the training crop.

The plain loop and segops train the same U-Net from the same initial weights on the same
native-resolution random crops for the same number of epochs; the plan chooses its own input
size and resize factor (`data.scale`), network, batch and normalisation, and its epochs for
the wall time segops took (its timing probe). All three are scored the same way: every
pixel of the held-out `test` split at its original resolution, through
`segops.inference.predict_image` (a sliding window of the crop size, on the image resized by
`data.scale` when the plan sets one: `predict.max_tile=0`, the protocol of the figures in
bench/RESULTS.md, measured before whole-image tiles became the default). The plain loop is the
60-line recipe people write by hand: AdamW, cosine schedule, cross-entropy, random crops and
flips; its final weights are scored. segops uses its defaults (cross-entropy + Dice, warm-up,
best epoch on `val`).

    python bench/quality.py [--n 160] [--size 128] [--crop 64] [--epochs 12] [--seed 0]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from segops.config import Config, load_config
from segops.data.dataset import SegmentationDataset
from segops.data.manifest import load_dataset
from segops.data.shapes import generate_shapes
from segops.data.transforms import train_transform
from segops.evaluate.report import score_split
from segops.inference import TrainedModel
from segops.metrics.semantic import iou, nanmean
from segops.models import build_model
from segops.train.loop import train


def base_config(root: Path, out: Path, args: argparse.Namespace, *extra: str) -> Config:
    return load_config(
        None,
        [
            f"data.root={root}",
            f"data.crop_size={args.crop}",
            "data.val_fraction=0.15",
            "data.test_fraction=0.15",
            "model.options={width: 16, levels: 4}",
            f"train.epochs={args.epochs}",
            "train.batch_size=8",
            f"train.seed={args.seed}",
            f"train.out_dir={out}",
            "predict.max_tile=0",  # windows of the input size, as the recorded figures
            *extra,
        ],
    )


def plain_loop(cfg: Config, classes: tuple[str, ...], info) -> torch.nn.Module:
    """The hand-written baseline: same network, crops, epochs and optimiser settings."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model.name, num_classes=len(classes), **cfg.model.options)
    aug = cfg.augment.model_copy(update={"color_jitter": 0.0})
    ds = SegmentationDataset(
        info.root, info.split("train"), train_transform(aug, 0, cfg.data.crop_size), True
    )
    loader = DataLoader(ds, cfg.train.batch_size, shuffle=True, drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.train.epochs * len(loader))
    for _ in range(cfg.train.epochs):
        model.train()
        for images, masks in loader:
            loss = F.cross_entropy(model(images), masks, ignore_index=255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def test_miou(model: torch.nn.Module, cfg: Config, classes: tuple[str, ...], info) -> float:
    """Mean IoU over the test split at original resolution, through predict_image."""
    trained = TrainedModel(model.eval(), cfg, classes, Path("-"), torch.device("cpu"))
    ds = SegmentationDataset(info.root, info.split("test"))
    mat, _ = score_split(trained, ds, 1)
    return nanmean(iou(mat))


def run_plain(cfg: Config, classes: tuple[str, ...], info) -> float:
    return test_miou(plain_loop(cfg, classes, info), cfg, classes, info)


def run_segops(cfg: Config, classes: tuple[str, ...], info) -> float:
    from segops.inference import load_trained

    result = train(cfg, dataset=info)
    return test_miou(load_trained(result.best_checkpoint).model, cfg, classes, info)


def planned(cfg: Config, out: Path, budget_seconds: float) -> Config:
    """`segops plan` for the wall time segops' defaults took (its probe sets the epochs)."""
    from segops.plan.planfile import plan_overrides, write_plan
    from segops.plan.planner import plan_dataset

    plan = plan_dataset(cfg, budget_minutes=budget_seconds / 60)
    path = write_plan(plan, out / "plan.yaml")
    print(path.read_text(), flush=True)
    keep = [f"train.out_dir={out / 'plan'}", f"train.seed={cfg.train.seed}"]
    keep += ["data.val_fraction=0.15", "data.test_fraction=0.15", "predict.max_tile=0"]
    return load_config(None, [*plan_overrides(path), *keep])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=160)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="segops-quality-") as tmp:
        root = generate_shapes(Path(tmp) / "shapes-large", n=args.n, size=args.size, seed=7)
        cfg = base_config(root, Path(tmp) / "segops", args)
        info = load_dataset(cfg.data, eval_split="test")
        classes = tuple(info.classes)
        figures, seconds = {}, {}
        jobs = {
            "plain PyTorch loop": lambda: run_plain(cfg, classes, info),
            "segops (defaults)": lambda: run_segops(cfg, classes, info),
            "segops plan recipe": lambda: run_segops(
                planned(cfg, Path(tmp), seconds["segops (defaults)"]), classes, info
            ),
        }
        for name, job in jobs.items():
            start = time.perf_counter()
            figures[name] = job()
            seconds[name] = time.perf_counter() - start
            print(f"{name}: test mean IoU {figures[name]:.4f} ({seconds[name]:.0f} s)", flush=True)
    print("\n| recipe | test mean IoU (native) | train + score s |\n|---|---|---|")
    for name, value in figures.items():
        print(f"| {name} | {value:.4f} | {seconds[name]:.0f} |")
    gap = figures["segops (defaults)"] - figures["plain PyTorch loop"]
    best = max(figures["segops (defaults)"], figures["plain PyTorch loop"])
    print(f"plan - best of the two: {figures['segops plan recipe'] - best:+.4f} (goal > 0)")
    machine = platform.processor() or platform.machine()
    print(
        f"\nsegops - plain: {gap:+.4f} (goal >= -0.005); {machine}, torch {torch.__version__}, "
        f"{args.n} images {args.size}px, crop {args.crop}, {args.epochs} epochs"
    )


if __name__ == "__main__":
    main()
