"""Latency of the served model (`mlflow models serve`) against a direct PyTorch forward.

Builds the params.yaml U-Net (untrained weights: latency does not depend on them), logs it as
the segops pyfunc into a temporary MLflow store, registers it as champion and serves it on
loopback. Then, interleaved in one run (server, direct, server, direct, ...) so machine noise
hits both alike: one request with one 64x64 / 256x256 PNG against `predict_image` on the same
decoded image. Prints median and p90 of each and their ratio, and images/s of batch
prediction: `predict_folder` over a folder of PNGs, and one request carrying a batch.

    python bench/serving.py [--rounds 20] [--batch-images 16] [--threads 1]

`--threads` sets torch's intra-op threads in both processes alike (OMP_NUM_THREADS for the
server): on a small shared machine two spinning thread pools otherwise distort both paths.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = (64, 256)


def setup_model(tmp: Path) -> tuple[Path, str]:
    """Checkpoint of an untrained params.yaml model, logged and registered as champion."""
    import mlflow

    from segops.config import load_config
    from segops.models import build_model
    from segops.promotion.registry import record_decision, register
    from segops.serving.logging import log_pyfunc
    from segops.train.checkpoint import save_checkpoint

    cfg = load_config("params.yaml" if Path("params.yaml").exists() else None, [])
    classes = ["background", "circle", "square", "triangle"]
    model = build_model(cfg.model.name, num_classes=len(classes), **cfg.model.options)
    state = {"model": model.state_dict(), "config": cfg.to_dict(), "classes": classes}
    state |= {"model_name": cfg.model.name, "dataset_hash": "bench", "config_hash": "bench"}
    ckpt = tmp / "model.pt"
    save_checkpoint(state, ckpt)
    client = mlflow.MlflowClient()
    exp = client.create_experiment("bench", artifact_location=(tmp / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    ref = register(log_pyfunc(run_id, ckpt), "bench-serving", run_id, "bench", {})
    record_decision(ref, {}, True, "bench")
    return ckpt, "models:/bench-serving@champion"


def start_server(model_uri: str, log: Path, threads: int) -> tuple[subprocess.Popen, str]:
    """`mlflow models serve` on a free loopback port; returns the process and its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env["OMP_NUM_THREADS"] = str(threads)  # torch reads it at start: same threads as direct
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/ping", timeout=2):
                return proc, base
        except OSError:  # not up yet
            if proc.poll() is not None:
                raise SystemExit(f"server exited; see {log}") from None
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server not ready after 120 s")


def request(url: str, body: bytes) -> float:
    """Seconds for one POST /invocations (JSON already encoded), response read in full."""
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as resp:
        resp.read()
    return time.perf_counter() - start


def payload(pngs: list[bytes]) -> bytes:
    rows = [{"image": base64.b64encode(p).decode()} for p in pngs]
    return json.dumps({"dataframe_records": rows}).encode()


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def write_images(folder: Path, size: int, n: int) -> list[Path]:
    """`n` random RGB PNGs of `size` x `size` (fixed seed)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


def latency(url: str, trained, images: dict[int, Path], rounds: int) -> dict[int, dict]:
    """Interleaved server / direct timings per size: {size: {"server": [...], "direct": [...]}}."""
    from segops.data.io import read_image
    from segops.inference import predict_image

    bodies = {s: payload([png_bytes(p)]) for s, p in images.items()}
    arrays = {s: read_image(p) for s, p in images.items()}
    times = {s: {"server": [], "direct": []} for s in images}
    for r in range(rounds + 3):  # the first 3 rounds warm up both paths and are dropped
        for size in images:
            server = request(url, bodies[size])
            start = time.perf_counter()
            predict_image(trained, arrays[size])
            direct = time.perf_counter() - start
            if r >= 3:
                times[size]["server"].append(server)
                times[size]["direct"].append(direct)
    return times


def batch_rates(url: str, ckpt: Path, folder: Path, paths: list[Path]) -> dict[str, float]:
    """images/s of `predict_folder` over `folder` and of one request carrying every image."""
    from segops.predict import predict_folder

    start = time.perf_counter()
    predict_folder(ckpt, folder, folder.parent / "pred")
    folder_rate = len(paths) / (time.perf_counter() - start)
    seconds = request(url, payload([png_bytes(p) for p in paths]))
    return {"predict_folder": folder_rate, "one request": len(paths) / seconds}


def report(times: dict[int, dict], rates: dict[str, float], n_batch: int) -> None:
    print("| image | server median ms | server p90 ms | direct median ms | direct p90 ms | ratio |")
    print("|---|---|---|---|---|---|")
    for size, t in times.items():
        s, d = statistics.median(t["server"]), statistics.median(t["direct"])
        print(
            f"| {size}x{size} PNG | {s * 1e3:.1f} | {p90(t['server']) * 1e3:.1f} | "
            f"{d * 1e3:.1f} | {p90(t['direct']) * 1e3:.1f} | {s / d:.2f} |"
        )
    for name, rate in rates.items():
        print(f"batch of {n_batch} 256x256 PNGs, {name}: {rate:.1f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch-images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        from segops.inference import load_trained

        ckpt, model_uri = setup_model(tmp)
        proc, base = start_server(model_uri, tmp / "server.log", args.threads)
        try:
            images = {s: write_images(tmp / f"one{s}", s, 1)[0] for s in SIZES}
            times = latency(base + "/invocations", load_trained(ckpt), images, args.rounds)
            paths = write_images(tmp / "batch" / "images", 256, args.batch_images)
            rates = batch_rates(base + "/invocations", ckpt, paths[0].parent, paths)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        print(f"torch threads: {args.threads}, rounds: {args.rounds}")
        report(times, rates, args.batch_images)


if __name__ == "__main__":
    main()
