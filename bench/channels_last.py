"""Training step time on CPU, channels-last against contiguous, per model and side (issue 17).

    .venv/bin/python bench/channels_last.py [--models unet segnet] [--sides 64 128] [--rounds 5]

Each round times one forward+backward+AdamW step in each memory format, in alternating order,
after a warm-up of both; the figure is the median of the per-round ratios channels-last /
contiguous (below 1: channels-last is faster). The decision `train.channels_last: auto` takes
on CPU (`segops.train.device.channels_last_helps`) is printed beside it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from segops.models import build_model
from segops.train.device import channels_last_helps
from segops.train.losses import build_loss


def step_time(model, optimizer, criterion, images, masks) -> float:
    start = time.perf_counter()
    loss = criterion(model(images), masks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def setup(name: str, side: int, batch: int, fmt: torch.memory_format) -> tuple:
    torch.manual_seed(0)
    model = build_model(name, num_classes=4).to(memory_format=fmt).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 3, side, side).to(memory_format=fmt)
    masks = torch.randint(0, 4, (batch, side, side))
    return model, optimizer, build_loss("ce_dice", None), images, masks


def ratio(name: str, side: int, batch: int, rounds: int) -> tuple[float, float, float]:
    """(median ratio, median contiguous seconds, median channels-last seconds)."""
    plain = setup(name, side, batch, torch.contiguous_format)
    last = setup(name, side, batch, torch.channels_last)
    for parts in (plain, last):  # warm-up: allocation and kernel choice
        step_time(*parts)
    ratios, a, b = [], [], []
    for k in range(rounds):
        order = (plain, last) if k % 2 == 0 else (last, plain)
        times = {id(p): step_time(*p) for p in order}
        a.append(times[id(plain)])
        b.append(times[id(last)])
        ratios.append(b[-1] / a[-1])
    return statistics.median(ratios), statistics.median(a), statistics.median(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unet", "segnet"])
    parser.add_argument("--sides", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, batch {args.batch}, rounds {args.rounds}")
    print("model side  contiguous_s  channels_last_s  ratio  auto")
    for name in args.models:
        for side in args.sides:
            r, a, b = ratio(name, side, args.batch, args.rounds)
            auto = channels_last_helps(name, side)
            print(f"{name} {side}  {a:.3f}  {b:.3f}  {r:.3f}  {auto}", flush=True)


if __name__ == "__main__":
    main()
