"""Batch prediction of many small images: local engine, Ray engine and a bare forward loop.

The params.yaml U-Net (untrained weights: time does not depend on them) saved as a checkpoint;
`--images` PNGs of `--size` pixels. Three ways through the same folder, writing one class-id
PNG per image (no overlays):

- bare: a minimal loop: decode, normalise, stack `--batch` images, forward, argmax, save PNG;
- local: `segops predict --engine local` (`segops.scoring.job.predict_job`);
- ray: `segops predict --engine ray` on a local Ray cluster of `--ray-cpus` CPUs started once
  before (its start-up is reported apart); the actor pool (one model load per actor) is part
  of each run.

Each is run `--rounds` times, interleaved (bare, local, ray, bare, ...); medians are reported,
with the per-image time of each engine over the bare loop's. Then the served path's core: 8
images of 64x64 (one piece each) and of 256x256 (49 sliding windows each, which the per-row
path already batched by 8 per image) through `predict_masks` (one request's batch) against
`predict_image` per row.

    python bench/batch_predict.py [--images 1000] [--size 64] [--rounds 3] [--ray-cpus 2]
                                  [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_checkpoint(tmp: Path) -> Path:
    from segops.config import load_config
    from segops.models import build_model
    from segops.train.checkpoint import save_checkpoint

    cfg = load_config("params.yaml" if Path("params.yaml").exists() else None, [])
    classes = ["background", "circle", "square", "triangle"]
    model = build_model(cfg.model.name, num_classes=len(classes), **cfg.model.options)
    state = {"model": model.state_dict(), "config": cfg.to_dict(), "classes": classes}
    state |= {"model_name": cfg.model.name, "dataset_hash": "bench", "config_hash": "bench"}
    save_checkpoint(state, tmp / "model.pt")
    return tmp / "model.pt"


def make_images(folder: Path, n: int, size: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"img{i:05d}.png")


def bare_loop(checkpoint: Path, src: Path, out: Path, batch: int) -> float:
    """Seconds for decode -> normalise -> forward in batches -> argmax -> PNG, nothing else."""
    import torch

    from segops.inference import load_trained

    trained = load_trained(checkpoint)
    mean = torch.tensor(trained.config.augment.mean).view(1, 3, 1, 1)
    std = torch.tensor(trained.config.augment.std).view(1, 3, 1, 1)
    paths = sorted(src.iterdir())
    out.mkdir(exist_ok=True)
    start = time.perf_counter()
    with torch.inference_mode():
        for k in range(0, len(paths), batch):
            chunk = paths[k : k + batch]
            arrays = [np.asarray(Image.open(p).convert("RGB")) for p in chunk]
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
            masks = trained.model((x - mean) / std).argmax(1).byte().numpy()
            for p, mask in zip(chunk, masks, strict=True):
                Image.fromarray(mask).save(out / f"{p.stem}_mask.png")
    return time.perf_counter() - start


def engine_run(checkpoint: Path, src: Path, out: Path, engine: str, batch: int) -> float:
    from segops.scoring.job import JobOptions, predict_job

    options = JobOptions(engine, batch, overlays=False, overwrite=True)
    start = time.perf_counter()
    summary = predict_job({"checkpoint": str(checkpoint)}, src, out, options)
    assert summary.scored == len(list(src.iterdir())) and summary.errors == 0
    return time.perf_counter() - start


def served_core(checkpoint: Path, rounds: int, size: int) -> tuple[float, float]:
    """Median seconds of 8 images of `size`: batched (`predict_masks`), then per row."""
    from segops.inference import load_trained, predict_image, predict_masks

    trained = load_trained(checkpoint)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(8)]
    batched, per_row = [], []
    for _ in range(rounds + 1):  # the first round warms up
        start = time.perf_counter()
        predict_masks(trained, images, trained.config.predict.batch_size)
        batched.append(time.perf_counter() - start)
        start = time.perf_counter()
        [predict_image(trained, image) for image in images]
        per_row.append(time.perf_counter() - start)
    return statistics.median(batched[1:]), statistics.median(per_row[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads here")
    args = parser.parse_args()
    import ray
    import torch

    if args.threads:  # e.g. 1 with --ray-cpus 1: one core each, overhead per image alone
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="segops-bench-") as tmp:
        tmp = Path(tmp)
        checkpoint = make_checkpoint(tmp)
        make_images(tmp / "in", args.images, args.size)
        start = time.perf_counter()
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - start
        times: dict[str, list[float]] = {"bare": [], "local": [], "ray": []}
        for r in range(args.rounds):
            times["bare"].append(bare_loop(checkpoint, tmp / "in", tmp / f"bare{r}", args.batch))
            for engine in ("local", "ray"):
                out = tmp / f"{engine}{r}"
                times[engine].append(engine_run(checkpoint, tmp / "in", out, engine, args.batch))
        ray.shutdown()
        served = {size: served_core(checkpoint, args.rounds, size) for size in (64, 256)}
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{args.images} images of {args.size}x{args.size}, batch {args.batch}, "
        f"torch threads {torch.get_num_threads()}, ray cpus {args.ray_cpus}; "
        f"ray start {ray_start:.1f} s"
    )
    print("| way | median s | ms / image | images/s | x bare |")
    print("|---|---|---|---|---|")
    for name, seconds in medians.items():
        per = 1000 * seconds / args.images
        print(
            f"| {name} | {seconds:.2f} | {per:.2f} | {args.images / seconds:.0f} | "
            f"{seconds / medians['bare']:.2f} |"
        )
    for size, (batched, per_row) in served.items():
        print(
            f"served core, 8 images {size}x{size}: batched {batched * 1000:.0f} ms, per row "
            f"{per_row * 1000:.0f} ms, per row / batched {per_row / batched:.2f}"
        )


if __name__ == "__main__":
    main()
