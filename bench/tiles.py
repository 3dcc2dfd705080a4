"""Native-resolution inference: tiles as large as `predict.max_tile` against windows of the
model's input size (issue 17), side by side.

    .venv/bin/python bench/tiles.py [--side 512] [--input 64] [--rounds 5] [--model unet]

A model described as trained on `--input`-pixel crops (untrained weights: the time does not
depend on them) predicts one `--side`² image with `predict.max_tile: 0` (windows of the input
size, overlap 0.5: 225 windows of 64 px on 512 px) and with the default `max_tile` (the whole
image in one forward), alternating, after a warm-up of both. Printed: seconds per image of
each and the median per-round ratio large/small (masks: tests/test_tiles.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from segops.config import load_config
from segops.inference import load_model_files, predict_image, tile_shape, with_tiles
from segops.models import build_model


def trained_on_crops(name: str, crop: int, folder: Path, threads: int):
    overrides = [f"model.name={name}", f"data.crop_size={crop}", f"predict.threads={threads}"]
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    torch.save(build_model(name, num_classes=4).state_dict(), folder / "weights.pt")
    meta = {"config": cfg.to_dict(), "classes": ["a", "b", "c", "d"]}
    (folder / "model.json").write_text(json.dumps(meta))
    return load_model_files(folder / "weights.pt", folder / "model.json", "cpu")


def timed(trained, image: np.ndarray) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    mask, _ = predict_image(trained, image)
    return time.perf_counter() - start, mask  # masks: tests/test_tiles.py checks them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        large = trained_on_crops(args.model, args.input, Path(tmp), args.threads)
    small = with_tiles(large, 0)
    image = np.random.default_rng(0).integers(0, 256, (args.side, args.side, 3), np.uint8)
    for trained in (small, large):  # warm-up
        timed(trained, image)
    ratios, a, b = [], [], []
    for k in range(args.rounds):
        order = (small, large) if k % 2 == 0 else (large, small)
        got = {id(t): timed(t, image) for t in order}
        a.append(got[id(small)][0])
        b.append(got[id(large)][0])
        ratios.append(b[-1] / a[-1])
    print(f"{args.model}, input {args.input} px, image {args.side} px, threads {args.threads}")
    print(f"tile {tile_shape(small, args.side, args.side)}: {statistics.median(a):.3f} s/image")
    print(f"tile {tile_shape(large, args.side, args.side)}: {statistics.median(b):.3f} s/image")
    rounds = f"median of {args.rounds} paired rounds"
    print(f"ratio large/small ({rounds}): {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
