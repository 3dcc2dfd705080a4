"""Time a few real training steps of the planned model on this machine (random tensors)."""

from __future__ import annotations

import time
from typing import Any

import torch

from segops.config import TrainConfig
from segops.models import build_model
from segops.train.device import resolve_runtime
from segops.train.losses import build_loss


def time_train_step(
    name: str,
    options: dict[str, Any],
    batch: int,
    side: int,
    *,
    num_classes: int,
    train: TrainConfig | None = None,
    steps: int = 3,
    max_seconds: float = 1.5,
) -> float:
    """Median seconds of one forward+backward+AdamW step of model `name` on a
    [batch, 3, side, side] batch, on the device and precision `train` resolves to. One
    warm-up step is not counted; timing stops after `steps` steps or `max_seconds`."""
    runtime = resolve_runtime(train or TrainConfig(), name, side)
    fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
    model = build_model(name, num_classes=num_classes, **options)
    model = model.to(runtime.device, memory_format=fmt)
    criterion = build_loss("ce_dice", None).to(runtime.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, side, side, generator=generator)
    masks = torch.randint(0, num_classes, (batch, side, side), generator=generator)
    images = images.to(runtime.device, memory_format=fmt)
    masks = masks.to(runtime.device)
    amp = runtime.amp_dtype or torch.float32
    model.train()
    times: list[float] = []
    begin = time.perf_counter()
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(runtime.device.type, dtype=amp, enabled=runtime.amp_dtype is not None):
            loss = criterion(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if runtime.device.type == "cuda":
            torch.cuda.synchronize(runtime.device)
        times.append(time.perf_counter() - start)
        if time.perf_counter() - begin > max_seconds and len(times) > 1:
            break
    counted = times[1:] or times  # the first step pays for allocation and kernel selection
    return float(sorted(counted)[len(counted) // 2])
