"""One torchrun rank: `python -m segops.train.worker CONFIG.yaml [--resume]`.

`segops.train.launch` starts it under `torch.distributed.run`. The rank joins the process
group, trains `CONFIG` through the same driver as one process (`segops.train.run`), and, on
rank 0 only, prints its progress as `@segops-event` lines and writes `result.json` beside
CONFIG. After a crash torchrun restarts the whole group (`--max-restarts`): a restarted rank
(TORCHELASTIC_RESTART_COUNT > 0) resumes from `checkpoints/last.pt`, like every other rank.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from segops.config import load_config
from segops.train.callbacks import Callback
from segops.train.distributed import close_world, init_world
from segops.train.run import train_configured

EVENT = "@segops-event "  # = segops.train.launch.EVENT (not imported: it would import torch run)


def _number(value: Any) -> Any:
    return float(value) if isinstance(value, float) and not math.isfinite(value) else value


class EventStream(Callback):
    """Rank 0's callback events as JSON lines on stdout, for the launcher to relay."""

    def _emit(self, event: str, *args: Any) -> None:
        print(EVENT + json.dumps({"event": event, "args": list(args)}, default=str), flush=True)

    def on_train_start(self, info: dict[str, Any]) -> None:
        self._emit("train_start", info)

    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        self._emit("step", epoch, step, steps, loss)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self._emit("epoch_end", {k: _number(v) for k, v in row.items()})

    def on_checkpoint(self, path: Path, is_best: bool) -> None:
        self._emit("checkpoint", str(path), is_best)


def _write_result(result: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(result), default=str))
    tmp.replace(path)


def main(argv: list[str] | None = None, callbacks: Sequence[Callback] = ()) -> int:
    """Train as this rank; 0 when done. `callbacks` (rank 0) hear the run besides the launcher:
    for programs that run ranks of their own, such as tests."""
    parser = argparse.ArgumentParser(prog="segops.train.worker")
    parser.add_argument("config", type=Path)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)

    cfg = load_config(args.config)
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    world = init_world(cfg.train.distributed.backend, cfg.train.device)
    done = False
    try:
        heard = [EventStream(), *callbacks] if world.is_main else []
        result = train_configured(
            cfg, resume=args.resume or restarted, callbacks=heard, world=world
        )
        if world.is_main:
            _write_result(result, args.config.with_name("result.json"))
        done = True
    finally:
        close_world(world, clean=done)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
