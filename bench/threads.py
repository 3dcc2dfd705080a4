"""Thread oversubscription: U-Net training steps with `train.threads: auto` against torch's
default thread count, with and without a second CPU-bound process on the machine.

Each measurement is a fresh process (`--worker auto|default`) that builds the default U-Net,
sets its threads (auto: `segops.train.device.apply_thread_policy`; default: untouched, one per
core), runs 2 warm-up steps, then times `--steps` forward+backward+AdamW steps on a random
[batch, 3, size, size] batch and prints the median step time. The competitor is started 2 s
before a `busy` measurement and killed after it: `--load spin` (default) is a single-threaded
Python loop (another user's CPU-bound job), `--load torch` a torch matmul loop on all cores
(another training with default threads). Rounds alternate the order of the four cases.
Reports the median step time of each case and each policy's slowdown busy / idle.

    python bench/threads.py [--rounds 3] [--steps 12] [--load spin|torch]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

LOADS = {
    "spin": "while True: pass",
    "torch": "import torch\nx = torch.rand(512, 512)\nwhile True: x = (x @ x).tanh()",
}


def worker(policy: str, steps: int, size: int, batch: int) -> None:
    import torch

    from segops.models import build_model
    from segops.train.device import apply_thread_policy
    from segops.train.losses import build_loss

    if policy == "auto":
        apply_thread_policy("auto")
    torch.manual_seed(0)
    model = build_model("unet", num_classes=4)
    criterion = build_loss("ce_dice", None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.rand(batch, 3, size, size)
    masks = torch.randint(0, 4, (batch, size, size))
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        loss = criterion(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    print(f"{statistics.median(times):.4f} {torch.get_num_threads()}")


def measure(policy: str, busy: bool, args) -> tuple[float, int]:
    load = None
    if busy:
        load = subprocess.Popen([sys.executable, "-c", LOADS[args.load]])
        time.sleep(2.0)
    try:
        cmd = [sys.executable, __file__, "--worker", policy, "--steps", str(args.steps)]
        cmd += ["--size", str(args.size), "--batch", str(args.batch)]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    finally:
        if load is not None:
            load.kill()
            load.wait()
    step, threads = out.stdout.split()
    return float(step), int(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", choices=("auto", "default"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--load", choices=tuple(LOADS), default="spin")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.size, args.batch)
        return
    cases = [(p, b) for b in (False, True) for p in ("auto", "default")]
    steps: dict[tuple[str, bool], list[float]] = {c: [] for c in cases}
    threads: dict[tuple[str, bool], list[int]] = {c: [] for c in cases}
    for r in range(args.rounds):
        for case in cases if r % 2 == 0 else cases[::-1]:
            step, used = measure(*case, args)
            state = "busy" if case[1] else "idle"
            print(f"round {r}: {case[0]} {state} {step:.3f} s/step, {used} threads", flush=True)
            steps[case].append(step)
            threads[case].append(used)
    print(f"{os.cpu_count()} cores, load {args.load}, {args.rounds} alternating rounds")
    med = {c: statistics.median(v) for c, v in steps.items()}
    for (policy, busy), values in steps.items():
        label = f"{policy:<8}{'busy' if busy else 'idle'}"
        used = threads[(policy, busy)]
        rounds = [round(v, 3) for v in values]
        print(f"{label}  step {med[(policy, busy)]:.3f} s  threads {used}  per round {rounds}")
    for policy in ("auto", "default"):
        print(f"{policy}: busy / idle = {med[(policy, True)] / med[(policy, False)]:.2f}")
    print(f"busy: default / auto = {med[('default', True)] / med[('auto', True)]:.2f}")


if __name__ == "__main__":
    main()
