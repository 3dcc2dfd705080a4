"""Batch prediction of many small images: local engine, Ray engine and a bare forward loop.

The params.yaml U-Net (untrained weights: time does not depend on them) saved as a checkpoint;
`--images` PNGs of `--size` pixels. Three ways through the same folder, writing one class-id
PNG per image (no overlays):

- bare: a minimal loop: decode, normalise, stack `--batch` images, forward, argmax, save PNG;
  its input is contiguous NCHW, the memory layout segops feeds the network;
- bare-cl: the same loop on the stacked HWC arrays as they come (`permute` without
  `contiguous`: channels-last strides, which this U-Net runs ~15 % faster on CPU, with other
  rounding): shown for reference, what the first two passes of this bench called "bare";
- local: `segops predict --engine local` (`segops.scoring.job.predict_job`);
- ray: `segops predict --engine ray` on a local Ray cluster of `--ray-cpus` CPUs started once
  before (its start-up is reported apart); the actor pool (one model load per actor) is part
  of each run.

After one unrecorded warm-up of each (first imports in this process: matplotlib, ray.data),
bare and local are run `--rounds` times, interleaved, before Ray starts (its idle daemons
would count against them), then ray `--rounds` times; each on the whole folder
and on a folder of one batch (`--batch` images: the fixed cost of a job, e.g. the Ray actor's
start); medians are reported, with the per-image time of each engine over the bare loop's,
whole and marginal ((whole - one batch) / (images - batch)). Both in wall seconds and in CPU
seconds (this process, plus every process started under it: Ray's actors, raylet, GCS),
which other work on a shared machine disturbs far less than wall time.

Then the served path: the segops pyfunc (`SegmentationModel.predict`, no HTTP) on one request
of 8 base64 PNG rows of 64x64 and of 256x256 (one piece each: 64 is the input size, and
256 fits `predict.max_tile`), with `batch_size` 8 (what a request does now: one forward)
against 1 (one forward per row).

    python bench/batch_predict.py [--images 1000] [--size 64] [--rounds 3] [--ray-cpus 2]
                                  [--threads N]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

SETTINGS: dict = {}  # predict settings over the model's own (`--threads`), every way alike


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


def bare_loop(
    checkpoint: Path, src: Path, out: Path, batch: int, contiguous: bool = True
) -> tuple[float, float]:
    """Wall and CPU seconds for decode -> normalise -> forward in batches -> argmax -> PNG,
    nothing else (the model is loaded before the clocks start); `contiguous`: NCHW input,
    else the channels-last strides of the stacked HWC arrays."""
    import torch

    from segops.inference import load_trained, with_predict

    trained = with_predict(load_trained(checkpoint), SETTINGS)
    mean = torch.tensor(trained.config.augment.mean).view(1, 3, 1, 1)
    std = torch.tensor(trained.config.augment.std).view(1, 3, 1, 1)
    paths = sorted(src.iterdir())
    out.mkdir(exist_ok=True)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for k in range(0, len(paths), batch):
            chunk = paths[k : k + batch]
            arrays = [np.asarray(Image.open(p).convert("RGB")) for p in chunk]
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
            x = (x.contiguous() if contiguous else x).float() / 255
            masks = trained.model((x - mean) / std).argmax(1).byte().numpy()
            for p, mask in zip(chunk, masks, strict=True):
                Image.fromarray(mask).save(out / f"{p.stem}_mask.png")
    return time.perf_counter() - start, time.process_time() - cpu


class Clock:
    """Wall and CPU seconds of a block: this process's CPU time plus that of every process
    started under it, polled every 0.25 s (an actor that exits is counted to its last poll);
    the polling's own CPU time (it scans /proc) is taken out."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.wall = self.cpu = 0.0

    def _children(self) -> dict[int, float]:
        seen = {}
        for child in self.me.children(recursive=True):
            try:
                times = child.cpu_times()
                seen[child.pid] = times.user + times.system
            except Exception:  # exited between listing and reading
                pass
        return seen

    @contextmanager
    def measure(self):
        before, last, stop, spent = self._children(), {}, threading.Event(), [0.0]

        def poll() -> None:
            start = time.thread_time()
            while not stop.wait(0.25):
                last.update(self._children())
            spent[0] = time.thread_time() - start

        poller = threading.Thread(target=poll, daemon=True)
        wall, cpu = time.perf_counter(), time.process_time()
        poller.start()
        try:
            yield self
        finally:
            stop.set()
            poller.join()
            self.wall = time.perf_counter() - wall
            self.cpu = time.process_time() - cpu - spent[0]
            last.update(self._children())
            self.cpu += sum(t - before.get(pid, 0.0) for pid, t in last.items())


def engine_run(checkpoint: Path, src: Path, out: Path, engine: str, batch: int):
    from segops.scoring.job import JobOptions, predict_job
    from segops.scoring.source import with_settings

    options = JobOptions(engine, batch, overlays=False, overwrite=True)
    source = with_settings({"checkpoint": str(checkpoint)}, SETTINGS)
    clock = Clock()
    with clock.measure():
        summary = predict_job(source, src, out, options)
    assert summary.scored == len(list(src.iterdir())) and summary.errors == 0
    return clock.wall, clock.cpu


def served(checkpoint: Path, tmp: Path, rounds: int, size: int) -> dict[str, tuple]:
    """Median (wall, CPU) seconds of one pyfunc request of 8 rows of `size`, by batch size."""
    import pandas as pd
    import torch

    from segops.serving.pyfunc import SegmentationModel, write_model_files

    state = torch.load(checkpoint, weights_only=False)
    artifacts = write_model_files(state, tmp / f"pyfunc{size}")
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(8):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
        rows.append({"image": base64.b64encode(buf.getvalue()).decode()})
    request, models = pd.DataFrame(rows), {}
    for batch in (8, 1):
        context = type("Context", (), {"artifacts": artifacts, "model_config": dict(SETTINGS)})()
        models[batch] = SegmentationModel()
        models[batch].load_context(context)
        models[batch].batch_size = batch
    times: dict[int, list] = {8: [], 1: []}
    for r in range(rounds + 1):  # the first round warms up
        for batch, model in models.items():
            clock = Clock()
            with clock.measure():
                model.predict(None, request)
            if r:
                times[batch].append((clock.wall, clock.cpu))
    return {b: tuple(statistics.median(x) for x in zip(*t, strict=True)) for b, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads, every way")
    args = parser.parse_args()
    import ray
    import torch

    if args.threads:  # e.g. 1 with --ray-cpus 1: one core each, overhead per image alone
        torch.set_num_threads(args.threads)
        SETTINGS["threads"] = args.threads  # where a model loads too (predict.threads: auto)

    with tempfile.TemporaryDirectory(prefix="segops-bench-") as tmp:
        tmp = Path(tmp)
        checkpoint = make_checkpoint(tmp)
        make_images(tmp / "in", args.images, args.size)
        make_images(tmp / "one", args.batch, args.size)
        bare_loop(checkpoint, tmp / "one", tmp / "warm-bare", args.batch)  # first imports
        engine_run(checkpoint, tmp / "one", tmp / "warm-local", "local", args.batch)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}

        def run(way: str, folder: str, r: int) -> None:
            src, out = tmp / folder, tmp / f"{way}-{folder}{r}"
            if way.startswith("bare"):
                took = bare_loop(checkpoint, src, out, args.batch, way == "bare")
            else:
                took = engine_run(checkpoint, src, out, way, args.batch)
            times.setdefault((way, folder), []).append(took)
            print(f"round {r} {way} {folder}: {took[0]:.2f} s, CPU {took[1]:.2f} s", flush=True)

        for r in range(args.rounds):  # before Ray starts: its idle daemons are not theirs
            for folder in ("in", "one"):
                run("bare", folder, r)
                run("bare-cl", folder, r)
                run("local", folder, r)
        served_times = {size: served(checkpoint, tmp, args.rounds, size) for size in (64, 256)}
        start = time.perf_counter()
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - start
        engine_run(checkpoint, tmp / "one", tmp / "warm-ray", "ray", args.batch)  # ray.data
        idle = Clock()
        with idle.measure():  # what Ray's daemons and this driver's Ray threads cost, idle
            time.sleep(5)
        print(f"Ray idle: {idle.cpu / idle.wall:.2f} CPU s per s", flush=True)
        for r in range(args.rounds):
            for folder in ("in", "one"):
                run("ray", folder, r)
        ray.shutdown()
    report(args, times, served_times, ray_start)


def report(args, times: dict, served_times: dict, ray_start: float) -> None:
    import torch

    def median(way: str, folder: str, k: int) -> float:
        return statistics.median(t[k] for t in times[(way, folder)])

    print(
        f"{args.images} images of {args.size}x{args.size}, batch {args.batch}, "
        f"torch threads {torch.get_num_threads()}, ray cpus {args.ray_cpus}; "
        f"ray start {ray_start:.1f} s; load {os.getloadavg()[0]:.1f}"
    )
    print("| way | clock | whole s | one batch s | ms / image | x bare | marginal ms | x bare |")
    print("|---|---|---|---|---|---|---|---|")
    n, b = args.images, args.batch
    for k, clock in enumerate(("wall", "CPU")):
        bare = median("bare", "in", k) / n
        bare_marginal = (median("bare", "in", k) - median("bare", "one", k)) / (n - b)
        for way in ("bare", "bare-cl", "local", "ray"):
            whole, one = median(way, "in", k), median(way, "one", k)
            marginal = (whole - one) / (n - b)
            print(
                f"| {way} | {clock} | {whole:.2f} | {one:.2f} | {1000 * whole / n:.2f} | "
                f"{whole / n / bare:.2f} | {1000 * marginal:.2f} | "
                f"{marginal / bare_marginal:.2f} |"
            )
    for size, by_batch in served_times.items():
        (w8, c8), (w1, c1) = by_batch[8], by_batch[1]
        print(
            f"served, one request of 8 images {size}x{size}: batch 8 {w8 * 1000:.0f} ms "
            f"(CPU {c8 * 1000:.0f}), batch 1 {w1 * 1000:.0f} ms (CPU {c1 * 1000:.0f}); "
            f"batch 1 / batch 8: wall {w1 / w8:.2f}, CPU {c1 / c8:.2f}"
        )


if __name__ == "__main__":
    main()
