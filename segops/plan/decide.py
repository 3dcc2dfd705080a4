"""From a dataset fingerprint to config values, each with its reason: pure functions.

Every rule is a small function with the thresholds below; `make_plan` runs them in order and
asks the injected step timer (a real training step, see `segops.plan.probe`) for the one
number that depends on the machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from segops.plan.decision import CROP_SIDES, Decision
from segops.plan.fingerprint import Fingerprint
from segops.plan.scale import decide_scale

CROP_CAP = {"cpu": 256, "cuda": 512}
SMALL_SIDE = 64  # images this small (and all one size) train whole, at native resolution
# On a CPU a crop is at most half the shorter side: a quarter of the pixels per step gives four
# times the updates in a time budget while each crop still spans half the image
# (bench/quality.py: whole 128-px images lost to 64-px crops at the same wall time).
CROP_SHARE = {"cpu": 0.5, "cuda": 1.0}
PIXEL_BUDGET = {"cpu": 8 * 128 * 128, "cuda": 8 * 512 * 512}  # batch x side^2 per step
MAX_BATCH = {"cpu": 8, "cuda": 32}
UNET_WIDTH = {"cpu": 16, "cuda": 32}
DEEPEST_MIN_PX = 8  # the U-Net's deepest level keeps at least this many pixels a side
MAX_LEVELS = 6  # resolution levels (5 downsamplings); the paper's U-Net has 5
# A present class with a smaller share of the pixels gets balanced weights. Low on purpose:
# the default loss (ce_dice) already weighs every class equally through its Dice term, and
# inverse-frequency CE weights on top made rare classes over-predicted (bench/quality.py).
RARE_CLASS = 0.005
EPOCH_RANGE = (3, 300)
MIN_STD = 0.01  # constant images would otherwise divide by ~0

# (model name, model options, batch size, input side) -> seconds per training step
StepTimer = Callable[[str, dict[str, Any], int, int], float]


@dataclass(frozen=True)
class Plan:
    fingerprint: Fingerprint
    device: str  # "cpu" or "cuda": what the sizes and the budget were planned for
    budget_minutes: float
    decisions: tuple[Decision, ...]
    step_seconds: float | None = None  # measured; None when the probe was skipped

    def values(self) -> dict[str, dict[str, Any]]:
        """{section: {key: value}} of every decision."""
        out: dict[str, dict[str, Any]] = {}
        for d in self.decisions:
            section, key = d.key.split(".", 1)
            out.setdefault(section, {})[key] = d.value
        return out

    def value(self, key: str) -> Any:
        """The planned value of `section.key`; KeyError when the plan leaves it out."""
        return {d.key: d.value for d in self.decisions}[key]


def _whole_image_side(fp: Fingerprint) -> int:
    """Median longer side rounded up to a multiple of 16, within 16..SMALL_SIDE."""
    longest = max(fp.height[1], fp.width[1])
    return min(SMALL_SIDE, max(16, -(-longest // 16) * 16))


def decide_input(fp: Fingerprint, device: str) -> tuple[int, list[Decision]]:
    """The side the model sees and the data.crop_size/image_size decisions that give it."""
    (h, _, hmax), (w, _, wmax) = fp.height, fp.width
    longest, cap = max(hmax, wmax), CROP_CAP[device]
    if longest <= SMALL_SIDE and fp.same_size:
        why = f"all images are {w}x{h} (<= {SMALL_SIDE} px): whole images are native resolution"
        return longest, [
            Decision("data.crop_size", None, f"{why}; no crops, no sliding window"),
            Decision("data.image_size", longest, f"{why} at this side"),
        ]
    share = CROP_SHARE[device]
    fits = [s for s in CROP_SIDES if s <= min(fp.short_side * share, cap)]
    if longest <= SMALL_SIDE or not fits:
        side = _whole_image_side(fp)
        why = (
            f"images are small ({w}x{h} to {wmax}x{hmax}, median shorter side {fp.short_side} "
            f"px) and not all one size: whole images resized to {side}, their median longer side"
        )
        return side, [
            Decision("data.crop_size", None, why),
            Decision("data.image_size", side, why),
        ]
    crop = fits[-1]
    half = "" if share == 1 else f" x {share:g} (more updates per minute on {device})"
    why = (
        f"median shorter side {fp.short_side} px (images {w}x{h} to {wmax}x{hmax}): the largest "
        f"of {list(CROP_SIDES)} <= it{half} and <= the {device} cap {cap}; random "
        "native-resolution crops in training, a sliding window of this side at inference"
    )
    return crop, [Decision("data.crop_size", crop, why)]


def decide_model(side: int, device: str) -> list[Decision]:
    """U-Net deep enough to see context, shallow enough to keep >= 8 px at the bottom.
    `levels` counts resolution levels (levels - 1 downsamplings), see segops.models.unet."""
    levels = 2
    while levels < MAX_LEVELS and side // 2**levels >= DEEPEST_MIN_PX:
        levels += 1
    width = UNET_WIDTH[device]
    bottom = side // 2 ** (levels - 1)
    return [
        Decision("model.name", "unet", "a U-Net trains from scratch on any side and class count"),
        Decision(
            "model.options",
            {"width": width, "levels": levels},
            f"{levels} levels ({levels - 1} downsamplings) leave {bottom} px at the deepest "
            f"level of a {side} px input (>= {DEEPEST_MIN_PX}, at most {MAX_LEVELS} levels); "
            f"width {width} on {device}",
        ),
    ]


def decide_batch(side: int, n_train: int, device: str) -> Decision:
    """Batch size keeping batch x side^2 within the device's pixel budget."""
    budget, most = PIXEL_BUDGET[device], MAX_BATCH[device]
    batch = max(2, min(most, budget // side**2))
    batch = max(1, min(batch, n_train))
    return Decision(
        "train.batch_size",
        batch,
        f"{budget} px per step on {device} / {side}x{side} inputs, within 2..{most} and the "
        f"{n_train} training images",
    )


def decide_class_weights(fp: Fingerprint) -> Decision:
    """`balanced` when the rarest present class has under RARE_CLASS of the pixels."""
    present = [(f, name) for f, name in zip(fp.class_fractions, fp.classes, strict=True) if f > 0]
    absent = [n for f, n in zip(fp.class_fractions, fp.classes, strict=True) if f == 0]
    note = f"; never in the training masks: {', '.join(absent)}" if absent else ""
    if not present:
        return Decision("train.class_weights", "none", f"no labelled training pixels{note}")
    share, name = min(present)
    if share < RARE_CLASS:
        why = f"rarest class '{name}' has {share:.2%} of the training pixels (< {RARE_CLASS:.1%})"
        return Decision("train.class_weights", "balanced", f"{why}: inverse-frequency{note}")
    why = (
        f"rarest class '{name}' has {share:.2%} of the training pixels (>= {RARE_CLASS:.1%}): "
        "the Dice term of the default loss already weighs every class equally"
    )
    return Decision("train.class_weights", "none", why + note)


def decide_normalisation(fp: Fingerprint) -> list[Decision]:
    """augment.mean/std: the training images' own per-channel statistics."""
    mean = [round(v, 4) for v in fp.mean]
    std = [round(max(v, MIN_STD), 4) for v in fp.std]
    grey = "; grey images (R = G = B)" if fp.channels == 1 else ""
    why = f"per-channel statistics of {fp.intensity_images} training images in [0, 1]{grey}"
    return [
        Decision("augment.mean", mean, why),
        Decision("augment.std", std, f"{why}; floored at {MIN_STD}"),
    ]


def decide_epochs(
    step_seconds: float,
    batch: int,
    samples: dict[str, int],
    budget_minutes: float,
    val_area: float = 1.0,
) -> Decision:
    """Epochs that fit the budget: training steps plus validation (a forward ~ 1/3 step per
    batch of inputs; `val_area`: a validation image's pixels over one input's, since with
    crops validation runs on whole images)."""
    n_train, n_val = samples.get("train", 0), samples.get("val", 0)
    steps = max(1, n_train // batch)
    epoch_seconds = steps * step_seconds + n_val * val_area * step_seconds / batch / 3
    fit = int(budget_minutes * 60 // max(epoch_seconds, 1e-6))
    lo, hi = EPOCH_RANGE
    epochs = min(hi, max(lo, fit))
    clamp = "" if epochs == fit else f", clamped to {lo}..{hi}"
    return Decision(
        "train.epochs",
        epochs,
        f"{budget_minutes:g} min budget / ~{epoch_seconds:.2f} s per epoch ({steps} steps of "
        f"{step_seconds:.3f} s measured + validation of {n_val} images of {val_area:.2g} "
        f"inputs each) = {fit}{clamp}",
    )


def make_plan(
    fp: Fingerprint,
    *,
    fmt: str = "folder",
    device: str = "cpu",
    budget_minutes: float = 10.0,
    timer: StepTimer | None = None,
) -> Plan:
    """Every decision for `fp`; `timer` (None: skip) measures a step for `train.epochs`."""

    side, decisions = decide_input(fp, device)
    val_area = 1.0
    if decisions[0].value is not None:  # native crops: resized first when objects are large
        side, decisions = decide_scale(fp, decisions[0])
        factor = decisions[1].value or 1.0
        val_area = fp.height[1] * fp.width[1] * factor**2 / side**2
    head = [
        Decision("data.root", fp.root, "the dataset this plan was made from"),
        Decision("data.format", fmt, "the layout the dataset was read with"),
    ]
    model = decide_model(side, device)
    batch = decide_batch(side, fp.n_train, device)
    rest = [batch, decide_class_weights(fp), *decide_normalisation(fp)]
    step = None
    if timer is not None:
        step = timer(model[0].value, model[1].value, batch.value, side)
        rest.append(decide_epochs(step, batch.value, fp.samples, budget_minutes, val_area))
    return Plan(fp, device, budget_minutes, (*head, *decisions, *model, *rest), step)
