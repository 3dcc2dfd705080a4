"""DDP on torchrun against the plain single-process driver, on the CPU (gloo).

1. Overhead: 1-process DDP (`segops.train.launch.launch` with one rank: torchrun, a gloo
   process group, the model wrapped in DistributedDataParallel) vs the plain driver
   (`train_configured`, no torch.distributed at all), both with 1 thread. Goal: >= 0.95.
2. Scaling on this CPU: 2 ranks x 1 thread vs 1 process x 2 threads, same global batch
   (2 x batch/2 vs 1 x batch), recorded as measured (CPUs gain little).

Throughput is the history's `images_per_s` (training images per second of the epoch's
training loop; startup, imports and validation excluded), the median over epochs 2..N (epoch
1 warms caches). Each pair alternates which runs first.

    python bench/ddp.py [--images 192] [--size 64] [--epochs 4] [--batch 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import pandas as pd

from segops.config import Config, load_config
from segops.data.shapes import generate_shapes
from segops.train.launch import launch
from segops.train.run import train_configured


def _config(root: Path, out: Path, args, *extra: str) -> Config:
    return load_config(
        None,
        [
            f"data.root={root}",
            f"data.image_size={args.size}",
            "data.val_fraction=0.1",
            "model.options={width: 8, depth: 3}",
            f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch}",
            "train.device=cpu",
            f"train.out_dir={out}",
            *extra,
        ],
    )


def _speed(history_csv: str) -> float:
    rows = pd.read_csv(history_csv)
    return float(statistics.median(rows["images_per_s"].iloc[1:]))


def _pair(run_a, run_b, rounds: int) -> list[tuple[float, float]]:
    found = []
    for r in range(rounds):
        first, second = (run_a, run_b) if r % 2 == 0 else (run_b, run_a)
        x, y = first(r), second(r)
        found.append((x, y) if r % 2 == 0 else (y, x))
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--part", choices=["both", "overhead", "scaling"], default="both")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    root = generate_shapes(tmp / "data", n=args.images, size=args.size, seed=0)

    def plain(threads: int):
        def run(r: int) -> float:
            cfg = _config(root, tmp / f"plain{threads}-{r}", args, f"train.threads={threads}")
            return _speed(train_configured(cfg).history_csv)

        return run

    def ddp(nproc: int, batch: int):
        def run(r: int) -> float:
            extra = [f"train.distributed.nproc_per_node={nproc}", f"train.batch_size={batch}"]
            cfg = _config(root, tmp / f"ddp{nproc}-{r}", args, "train.threads=1", *extra)
            return _speed(launch(cfg).history_csv)

        return run

    if args.part != "scaling":
        overhead = _pair(ddp(1, args.batch), plain(1), args.rounds)
        _report("1-process DDP / plain (1 thread)", overhead)
    if args.part != "overhead":
        scaling = _pair(ddp(2, args.batch // 2), plain(2), args.rounds)
        _report("2 ranks x 1 thread / 1 process x 2 threads", scaling)


def _report(what: str, pairs: list[tuple[float, float]]) -> None:
    ratios = [a / b for a, b in pairs]
    print(f"{what}: {[f'{a:.1f}/{b:.1f}' for a, b in pairs]} img/s", flush=True)
    print(f"  ratio median {statistics.median(ratios):.3f} (min {min(ratios):.3f})", flush=True)


if __name__ == "__main__":
    main()
