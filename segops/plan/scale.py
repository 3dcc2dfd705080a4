"""`data.scale` from the objects' size: a window should hold whole objects with context.

A sliding window (and a training crop) of side `crop` that is narrower than a few objects
sees parts of them: on `shapes` at 128 px, whose objects extend ~32 px, 64-px crops at native
resolution scored 0.341 test mean IoU and the same crops of the images resized by 0.5 scored
0.459 (bench/quality.py's data, 30 epochs each, 2026-12-02). Resizing keeps the cost per step
(the crop is the same) and shows the network whole objects; it is bounded so that the smallest
class keeps `MIN_OBJECT_PX`.
"""

from __future__ import annotations

from dataclasses import replace

from segops.plan.decision import CROP_SIDES, Decision
from segops.plan.fingerprint import Fingerprint

SCALES = (0.75, 0.5, 0.375, 0.25)  # tried largest first
# A typical object spans at most a third of the window's side: whole 64-px shapes images
# (objects ~16 px, a quarter) train well; 64-px crops of 128-px ones (~32 px, half) do not.
OBJECT_SHARE = 1 / 3
MIN_OBJECT_PX = 8  # no class's typical extent is resized below this


def choose_scale(fp: Fingerprint, crop: int) -> tuple[float | None, str]:
    """The factor (None: native) and why, from the fingerprint's object extents."""
    extent, limit = fp.object_extent, crop * OBJECT_SHARE
    if extent <= limit:
        return None, (
            f"typical object extent {extent:g} px <= {OBJECT_SHARE:.2g} x the {crop}-px window: "
            "windows hold whole objects at native resolution"
        )
    present = [e for e in fp.class_extents if e > 0] or [extent]
    smallest = min(present)
    allowed = [s for s in SCALES if smallest * s >= MIN_OBJECT_PX]
    why = (
        f"typical object extent {extent:g} px > {OBJECT_SHARE:.2g} x the {crop}-px window "
        "(windows see parts of objects)"
    )
    if not allowed:
        return None, (
            f"{why}, but the smallest class extends {smallest:g} px: resizing would leave it "
            f"under {MIN_OBJECT_PX} px, so native resolution"
        )
    factor = next((s for s in allowed if extent * s <= limit), allowed[-1])
    return factor, (
        f"{why}: images resized by {factor:g} (objects ~{extent * factor:g} px, smallest class "
        f"~{smallest * factor:g} px >= {MIN_OBJECT_PX}), the same in training, evaluation, "
        "predict and serving; metrics still at the original resolution"
    )


def decide_scale(fp: Fingerprint, crop: Decision) -> tuple[int, list[Decision]]:
    """The side the model sees and the data.crop_size/data.scale decisions, given the planned
    native crop: with a scale, the crop shrinks to fit the resized images if it must."""
    factor, why = choose_scale(fp, crop.value)
    if factor is None:
        return crop.value, [crop, Decision("data.scale", None, why)]
    short = fp.short_side * factor
    side = max([s for s in CROP_SIDES if s <= min(crop.value, short)] or [CROP_SIDES[0]])
    if side == crop.value:
        crop = replace(crop, reason=f"{crop.reason} (crops of the images resized by {factor:g})")
    else:
        crop = replace(
            crop,
            value=side,
            reason=f"{side}: the largest of {list(CROP_SIDES)} <= the resized median shorter "
            f"side {short:g} px (native plan: {crop.value}; {crop.reason})",
        )
    return side, [crop, Decision("data.scale", factor, why)]
