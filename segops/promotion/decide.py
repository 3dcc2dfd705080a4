"""Whether a challenger model replaces the champion: a pure function with its reasons and numbers.

Rules (all must pass, on the same evaluation data version):
  min_delta       challenger.mean - champion.mean >= cfg.min_delta (the dataset-level primary
                  metric: mean IoU by default, mask AP for instance models);
  bootstrap       the one-sided lower bound, at cfg.confidence, of the mean per-image improvement
                  is above 0 (a paired bootstrap that resamples images);
  max_class_drop  no class's value (IoU, Dice or AP) falls by more than cfg.max_class_drop
                  (None = absent: skipped).

The bootstrap is one-sided because the question is directional (is the challenger better?): at
confidence 0.95 the lower bound is the 5% quantile of the resampled means. The matching upper
bound is the 95% quantile, so [ci_low, ci_high] is an equal-tailed interval at 2 * confidence - 1
(90% for 0.95). A per-image score is NaN when the image holds only absent classes; pairs where
either model scored NaN are dropped, and the decision says how many.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from segops.config import PromotionConfig
from segops.errors import ConfigError

_BLOCK = 1 << 22  # resampled values held in memory at once (32 MiB of float64)
_SLACK = 1e-12  # a gain of exactly min_delta passes despite float rounding (0.705 - 0.7)
_SHOWN = 5  # ids or classes named in one message


@dataclass(frozen=True)
class Metric:
    """A primary metric the gate can compare."""

    column: str  # its per-class key in metrics.json and its column in per_image.csv
    kinds: tuple[str, ...]  # the model kinds evaluated with it
    label: str  # how reasons name it for the split
    class_label: str  # how reasons name it for one class


METRICS = {
    "mean_iou": Metric("iou", ("semantic", "instance"), "mean IoU", "IoU"),
    "mean_dice": Metric("dice", ("semantic", "instance"), "mean Dice", "Dice"),
    "mask_ap": Metric("ap", ("instance",), "mask AP", "AP"),
}


def primary_metric(metric: str, kind: str) -> str:
    """The metric the gate compares: `metric`, or for "auto" mask_ap (instance models) or
    mean_iou (semantic models)."""
    if metric == "auto":
        return "mask_ap" if kind == "instance" else "mean_iou"
    return metric


def check_metric(metric: str, kind: str) -> None:
    """ConfigError when `promotion.metric` is not one a model of `kind` is evaluated with."""
    chosen = primary_metric(metric, kind)
    if chosen not in METRICS or kind not in METRICS[chosen].kinds:
        usable = ["auto", *(m for m, spec in METRICS.items() if kind in spec.kinds)]
        raise ConfigError(
            f"promotion.metric {metric!r} does not exist for {kind} models; use one of {usable}"
        )


@dataclass(frozen=True)
class Scores:
    """Evaluation of one model on one evaluation data version."""

    data_version: str  # dataset hash the scores were computed on
    per_image: dict[str, float]  # image id -> that image's primary metric (e.g. its mean IoU)
    per_class: dict[str, float | None]  # class -> primary metric over the split (None = absent)
    mean: float  # primary metric over the split (e.g. mean IoU)
    metric: str = "mean_iou"  # which metric: mean_iou, mean_dice or mask_ap


@dataclass(frozen=True)
class PromotionDecision:
    """The verdict, one sentence per rule, and the numbers behind it."""

    promote: bool
    reasons: tuple[str, ...]  # one sentence per rule with its numbers, then any dropped images
    failed_rules: tuple[str, ...]  # of "min_delta", "bootstrap", "max_class_drop"
    data_version: str
    challenger_mean: float
    n_images: int  # images compared (after dropping NaN pairs)
    n_dropped: int  # images dropped because either score is NaN
    champion_mean: float | None = None
    delta: float | None = None  # challenger_mean - champion_mean
    ci_low: float | None = None  # one-sided lower bound of the mean per-image gain at confidence
    ci_high: float | None = None  # one-sided upper bound at confidence
    prob_improvement: float | None = None  # fraction of resamples with a positive mean gain
    worst_class: str | None = None
    worst_class_drop: float | None = None  # champion - challenger value; positive = regression
    metric: str = "mean_iou"  # the primary metric compared (Scores.metric)

    def to_dict(self) -> dict:
        """Plain JSON-able dict of every field (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_tags(self) -> dict[str, str]:
        """Flat string tags `promotion.<field>` for a registered model version."""
        return {f"promotion.{k}": _tag_text(v) for k, v in self.to_dict().items()}


def _tag_text(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, list):
        return "; ".join(map(str, value))
    return str(value)


def paired_bootstrap(
    challenger: np.ndarray, champion: np.ndarray, samples: int, confidence: float, seed: int
) -> tuple[float, float, float]:
    """(low, high, prob_improvement) for the mean of `challenger - champion` per image.

    Images are resampled with replacement `samples` times. `low` and `high` are the
    (1 - confidence) and `confidence` quantiles of the resampled means: one-sided bounds at
    `confidence`. `prob_improvement` is the fraction of resampled means above 0.
    """
    a, b = np.asarray(challenger, float), np.asarray(champion, float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0 or not np.isfinite(a - b).all():
        raise ValueError(f"need equal, non-empty, finite 1-d arrays: shapes {a.shape}, {b.shape}")
    diffs = a - b
    if samples < 1 or not 0 < confidence < 1:
        raise ValueError(f"samples must be >= 1 and 0 < confidence < 1: {samples}, {confidence}")
    rng, n = np.random.default_rng(seed), diffs.size
    rows = max(1, _BLOCK // n)  # blocks bound memory; each block is one vectorised draw
    means = np.concatenate(
        [
            diffs[rng.integers(0, n, size=(min(rows, samples - start), n))].mean(axis=1)
            for start in range(0, samples, rows)
        ]
    )
    low, high = np.quantile(means, [1 - confidence, confidence])
    return float(low), float(high), float((means > 0).mean())


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(repr(n) for n in names[:_SHOWN]) + more


def _labels(metric: str) -> tuple[str, str]:
    spec = METRICS.get(metric)
    return (spec.label, spec.class_label) if spec else (metric, metric)


def _check_comparable(challenger: Scores, champion: Scores) -> None:
    if challenger.metric != champion.metric:
        raise ValueError(
            f"the challenger is scored by {challenger.metric}, the champion by {champion.metric}:"
            " models of different kinds need different promotion.model_name values"
        )
    version = challenger.data_version
    if champion.data_version != version:
        raise ValueError(
            f"champion scores are on data version {champion.data_version!r}, the challenger's on"
            f" {version!r}: re-evaluate the champion on {version!r} before deciding"
        )
    only_chal = sorted(challenger.per_image.keys() - champion.per_image.keys())
    only_champ = sorted(champion.per_image.keys() - challenger.per_image.keys())
    if only_chal or only_champ:
        raise ValueError(
            f"per-image ids differ on data version {version!r}: {len(only_champ)} missing from"
            f" the challenger ({_shown(only_champ)}), {len(only_chal)} missing from the champion"
            f" ({_shown(only_chal)}); evaluate both on the same split"
        )
    for who, scores in (("challenger", challenger), ("champion", champion)):
        if not math.isfinite(scores.mean):
            raise ValueError(
                f"{who} {_labels(scores.metric)[0]} is {scores.mean}: there is nothing to compare"
            )


def _paired_images(challenger: Scores, champion: Scores) -> tuple[np.ndarray, np.ndarray, int]:
    """Both models' per-image scores in sorted id order, NaN pairs dropped; and the drop count."""
    ids = sorted(challenger.per_image)  # sorted: the resampling must not depend on dict order
    a = np.array([challenger.per_image[i] for i in ids], float)
    b = np.array([champion.per_image[i] for i in ids], float)
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep], int((~keep).sum())


def _bootstrap_rule(a: np.ndarray, b: np.ndarray, cfg: PromotionConfig) -> tuple[tuple, str]:
    """((low, high, prob_improvement), sentence); Nones when no image has both scores."""
    if a.size == 0:
        return (None, None, None), "no image has a score from both models: no bootstrap possible"
    low, high, prob = paired_bootstrap(a, b, cfg.bootstrap_samples, cfg.confidence, cfg.seed)
    verdict = "is above 0" if low > 0 else "is not above 0: the gain may be noise"
    return (low, high, prob), (
        f"paired bootstrap over {a.size} images ({cfg.bootstrap_samples} resamples): mean"
        f" per-image gain {float(np.mean(a - b)):+.4f}, one-sided {cfg.confidence * 100:.4g}%"
        f" bounds [{low:+.4f}, {high:+.4f}], lower bound {verdict} (gain in {prob:.1%} of"
        " resamples)"
    )


def _class_rule(challenger: Scores, champion: Scores, cfg: PromotionConfig) -> tuple[tuple, str]:
    """((worst class, its drop, failed), sentence); classes absent (None/NaN) in either skipped."""
    both, skipped = {}, []
    for name in sorted(challenger.per_class.keys() | champion.per_class.keys()):
        old, new = champion.per_class.get(name), challenger.per_class.get(name)
        if old is None or new is None or math.isnan(old) or math.isnan(new):
            skipped.append(name)
        else:
            both[name] = (old, new)
    skip = f", skipping {len(skipped)} absent in either: {_shown(skipped)}" if skipped else ""
    if not both:
        label = _labels(challenger.metric)[1]
        return (None, None, False), f"no class has a value ({label}) from both models{skip}"
    order = sorted(both, key=lambda n: both[n][1] - both[n][0])  # largest drop first
    over = [n for n in order if both[n][0] - both[n][1] > cfg.max_class_drop]
    told = ", ".join(
        f"{n!r} {both[n][0]:.4f} -> {both[n][1]:.4f}" for n in over[:_SHOWN] or order[:1]
    )
    text = (
        f"{len(over) or 'none'} of {len(both)} classes dropped more than max_class_drop"
        f" {cfg.max_class_drop:.4f} ({'over' if over else 'worst'}: {told}){skip}"
    )
    return (order[0], both[order[0]][0] - both[order[0]][1], bool(over)), text


def decide(challenger: Scores, champion: Scores | None, cfg: PromotionConfig) -> PromotionDecision:
    """The decision whether `challenger` replaces `champion` (None: there is none yet).

    Raises ValueError when the two were scored on different data versions (re-evaluate the
    champion first), on different image ids, or when either mean is not a number.
    """
    if champion is None:
        label = _labels(challenger.metric)[0]
        first = (
            f"no champion yet: the first version becomes champion ({label} {challenger.mean:.4f})"
        )
        n_nan = sum(math.isnan(v) for v in challenger.per_image.values())
        return PromotionDecision(
            promote=True,
            reasons=(first,),
            failed_rules=(),
            data_version=challenger.data_version,
            challenger_mean=challenger.mean,
            n_images=len(challenger.per_image) - n_nan,
            n_dropped=n_nan,
            metric=challenger.metric,
        )
    _check_comparable(challenger, champion)
    a, b, n_dropped = _paired_images(challenger, champion)
    delta = challenger.mean - champion.mean
    delta_ok = delta + _SLACK >= cfg.min_delta
    reasons = [
        f"{_labels(challenger.metric)[0]} {challenger.mean:.4f} vs champion"
        f" {champion.mean:.4f}: gain {delta:+.4f}"
        f" {'meets' if delta_ok else 'is below'} min_delta {cfg.min_delta:.4f}"
    ]
    (low, high, prob), text = _bootstrap_rule(a, b, cfg)
    (worst, worst_drop, class_failed), class_text = _class_rule(challenger, champion, cfg)
    reasons += [text, class_text]
    if n_dropped:
        total = len(challenger.per_image)
        reasons.append(f"dropped {n_dropped} of {total} images scored NaN by either model")
    bootstrap_ok = low is not None and low > 0
    passed = {"min_delta": delta_ok, "bootstrap": bootstrap_ok, "max_class_drop": not class_failed}
    failed = tuple(rule for rule, ok in passed.items() if not ok)
    return PromotionDecision(
        promote=not failed,
        reasons=tuple(reasons),
        failed_rules=failed,
        data_version=challenger.data_version,
        challenger_mean=challenger.mean,
        champion_mean=champion.mean,
        delta=delta,
        ci_low=low,
        ci_high=high,
        prob_improvement=prob,
        worst_class=worst,
        worst_class_drop=worst_drop,
        n_images=int(a.size),
        n_dropped=n_dropped,
        metric=challenger.metric,
    )
