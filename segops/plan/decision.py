"""One planned value with its reason, and the crop sides the planner chooses from (shared by
`segops.plan.decide` and `segops.plan.scale`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CROP_SIDES = (32, 64, 96, 128, 192, 256, 384, 512)  # powers of two and 1.5x: multiples of 32


@dataclass(frozen=True)
class Decision:
    key: str  # "section.key"
    value: Any
    reason: str
