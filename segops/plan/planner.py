"""Wiring: load a dataset, fingerprint it, time the planned model here, decide."""

from __future__ import annotations

from segops.config import Config
from segops.data.manifest import load_dataset
from segops.errors import DatasetError
from segops.plan.decide import Plan, StepTimer, make_plan
from segops.plan.fingerprint import fingerprint_dataset
from segops.plan.probe import time_train_step
from segops.train.device import select_device


def planning_device(spec: str) -> str:
    """`cuda` or `cpu`: the device class whose sizes and budget the plan uses."""

    return "cuda" if select_device(spec).type == "cuda" else "cpu"


def step_timer(cfg: Config, num_classes: int) -> StepTimer:
    """A StepTimer running `segops.plan.probe.time_train_step` with `cfg.train`'s device."""

    def timer(name: str, options: dict, batch: int, side: int) -> float:
        return time_train_step(name, options, batch, side, num_classes=num_classes, train=cfg.train)

    return timer


def plan_dataset(cfg: Config, *, budget_minutes: float = 10.0, probe: bool = True) -> Plan:
    """The plan for the dataset at `cfg.data` (read with its format and split options);
    `probe=False` skips timing, so `train.epochs` is left out. Writes nothing."""
    root = cfg.data.root
    if not root.is_dir():
        raise DatasetError(
            f"{root}: no such dataset folder; give the folder that holds images/, masks/ and "
            "classes.txt (or pass --format for another layout)"
        )
    info = load_dataset(cfg.data, eval_split=None, write_splits=False)
    fp = fingerprint_dataset(info)
    if fp.n_train == 0:
        raise DatasetError(f"{root}: no training samples; nothing to plan from")
    timer = step_timer(cfg, len(fp.classes)) if probe else None
    device = planning_device(cfg.train.device)
    return make_plan(
        fp, fmt=cfg.data.format, device=device, budget_minutes=budget_minutes, timer=timer
    )
