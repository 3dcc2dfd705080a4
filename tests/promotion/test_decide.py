import importlib
import json
import math

import numpy as np
import pytest

from segops.config import PromotionConfig
from segops.promotion import Scores, decide, paired_bootstrap

CFG = PromotionConfig()  # min_delta 0.005, confidence 0.95, max_class_drop 0.02, 2000 resamples
N = 20
BASE = np.linspace(0.50, 0.69, N)  # the champion's per-image IoU
CLASSES = {"background": 0.90, "circle": 0.60, "square": 0.50}
WIGGLE = np.tile([0.01, -0.01], N // 2)  # small per-image noise around a shift
NOISE = np.tile([0.20, -0.20], N // 2)  # large per-image noise: mean 0, sd 0.2


def scores(per_image, per_class=None, mean=None, version="d1", **class_changes) -> Scores:
    """Scores over ids img000..; classes are CLASSES plus `class_changes`; mean of per_image."""
    values = [float(v) for v in per_image]
    per_class = dict(CLASSES if per_class is None else per_class)
    for name, change in class_changes.items():
        per_class[name] = None if change is None else per_class[name] + change
    mean = float(np.nanmean(values)) if mean is None else mean
    return Scores(version, {f"img{i:03d}": v for i, v in enumerate(values)}, per_class, mean)


CHAMPION = scores(BASE)
NAN_A, NAN_B = BASE + 0.05, BASE.copy()
NAN_A[0], NAN_B[1] = np.nan, np.nan

# id, challenger, champion, config, failed rules, delta, words the reasons must contain
CASES = [
    (
        "clearly better",
        scores(BASE + 0.05 + WIGGLE, background=0.01, circle=0.04, square=0.03),
        CHAMPION, CFG, (), 0.05,
        ["gain +0.0500 meets min_delta 0.0050", "lower bound is above 0",
         "none of 3 classes dropped more than max_class_drop 0.0200",
         "(worst: 'background' 0.9000 -> 0.9100)"],
    ),
    (
        "worse",
        scores(BASE - 0.03, background=-0.01, circle=-0.01, square=-0.01),
        CHAMPION, CFG, ("min_delta", "bootstrap"), -0.03,
        ["gain -0.0300 is below min_delta 0.0050", "[-0.0300, -0.0300]", "gain in 0.0% of"],
    ),
    (
        "better on average, within noise",
        scores(BASE + 0.01 + NOISE, background=0.01, circle=0.01, square=0.01),
        CHAMPION, CFG, ("bootstrap",), 0.01,
        ["gain +0.0100 meets min_delta", "lower bound is not above 0: the gain may be noise"],
    ),
    (
        "one class regressed",
        scores(BASE + 0.05, background=0.05, circle=-0.10, square=0.05),
        CHAMPION, CFG, ("max_class_drop",), 0.05,
        ["1 of 3 classes dropped more than max_class_drop 0.0200",
         "(over: 'circle' 0.6000 -> 0.5000)"],
    ),
    (
        "exactly equal",
        CHAMPION, CHAMPION, CFG, ("min_delta", "bootstrap"), 0.0,
        ["gain +0.0000 is below min_delta 0.0050", "[+0.0000, +0.0000]"],
    ),
    (
        "exactly equal, no margin asked",
        CHAMPION, CHAMPION, PromotionConfig(min_delta=0), ("bootstrap",), 0.0,
        ["gain +0.0000 meets min_delta 0.0000", "lower bound is not above 0"],
    ),
    (
        "gain of exactly min_delta",  # 0.705 - 0.7 is 0.00499999... in floats
        scores(BASE + 0.005, mean=0.705), scores(BASE, mean=0.7), CFG, (), 0.005,
        ["gain +0.0050 meets min_delta 0.0050"],
    ),
    (
        "class absent in one model is skipped",
        scores(BASE + 0.05, circle=None), CHAMPION, CFG, (), 0.05,
        ["none of 2 classes dropped", "skipping 1 absent in either: 'circle'"],
    ),
    (
        "NaN images dropped",
        scores(NAN_A), scores(NAN_B, mean=CHAMPION.mean), CFG, (), None,
        ["bootstrap over 18 images", "dropped 2 of 20 images"],
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("challenger", "champion", "cfg", "failed", "delta", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide_table(challenger, champion, cfg, failed, delta, words):
    decision = decide(challenger, champion, cfg)
    assert decision.failed_rules == failed
    assert decision.promote is (failed == ())
    assert decision.delta == pytest.approx(challenger.mean - champion.mean, abs=1e-12)
    if delta is not None:
        assert decision.delta == pytest.approx(delta, abs=1e-9)
    text = " | ".join(decision.reasons)
    for rule in ("min_delta", "95% bounds", "max_class_drop"):  # every rule states its numbers
        assert rule in text
    for word in words:
        assert word in text


def test_no_champion_promotes_the_first_version():
    decision = decide(scores(BASE), None, CFG)
    assert decision.promote is True and decision.failed_rules == ()
    assert decision.reasons == (
        "no champion yet: the first version becomes champion (mean IoU 0.5950)",
    )
    assert decision.challenger_mean == pytest.approx(0.595)
    assert (decision.champion_mean, decision.delta, decision.ci_low) == (None, None, None)
    assert (decision.n_images, decision.n_dropped) == (N, 0)


def test_clear_gain_has_tight_interval():
    decision = decide(scores(BASE + 0.05 + WIGGLE), CHAMPION, CFG)
    # Per-image gains are 0.04 or 0.06, half each: the mean's sd over resamples is 0.01/sqrt(20).
    assert 0.045 < decision.ci_low < 0.05 < decision.ci_high < 0.055
    assert decision.prob_improvement == 1.0
    assert decision.n_images == N


def test_noisy_gain_interval_straddles_zero():
    decision = decide(scores(BASE + 0.01 + NOISE), CHAMPION, CFG)
    # sd 0.2 over 20 images: one-sided 95% bounds near 0.01 -/+ 1.645 * 0.2 / sqrt(20) = 0.074
    assert -0.09 < decision.ci_low < -0.05 and 0.07 < decision.ci_high < 0.11
    assert 0.5 < decision.prob_improvement < 0.95


def test_class_regression_names_worst_class_and_drop():
    challenger = scores(BASE + 0.05, background=0.05, circle=-0.10, square=-0.03)
    decision = decide(challenger, CHAMPION, CFG)
    assert decision.worst_class == "circle"
    assert decision.worst_class_drop == pytest.approx(0.10)
    assert decision.reasons[2] == (
        "2 of 3 classes dropped more than max_class_drop 0.0200"
        " (over: 'circle' 0.6000 -> 0.5000, 'square' 0.5000 -> 0.4700)"
    )


def test_no_image_scored_by_both_fails_the_bootstrap_rule():
    challenger = scores([math.nan] * N, mean=0.7)
    decision = decide(challenger, CHAMPION, CFG)
    assert decision.failed_rules == ("bootstrap",)
    assert (decision.ci_low, decision.ci_high, decision.prob_improvement) == (None, None, None)
    assert (decision.n_images, decision.n_dropped) == (0, N)
    assert decision.reasons[1] == "no image has a score from both models: no bootstrap possible"
    assert decision.reasons[3] == "dropped 20 of 20 images scored NaN by either model"


def test_different_data_version_asks_for_reevaluation():
    with pytest.raises(ValueError, match="re-evaluate the champion on 'd2'"):
        decide(scores(BASE, version="d2"), CHAMPION, CFG)


def test_mismatched_ids_are_named():
    values = dict(CHAMPION.per_image)
    values["extra"] = values.pop("img003")
    challenger = Scores("d1", values, CLASSES, CHAMPION.mean)
    with pytest.raises(ValueError, match=r"1 missing from the challenger \('img003'\)") as err:
        decide(challenger, CHAMPION, CFG)
    assert "1 missing from the champion ('extra')" in str(err.value)


def test_decision_does_not_depend_on_id_order():
    challenger = scores(BASE + 0.01 + NOISE)
    reordered = Scores("d1", dict(reversed(challenger.per_image.items())), CLASSES, 0.605)
    assert decide(reordered, CHAMPION, CFG) == decide(challenger, CHAMPION, CFG)


def test_tags_are_flat_strings():
    decision = decide(scores(BASE + 0.05, circle=-0.10), CHAMPION, CFG)
    tags = decision.to_tags()
    assert all(k.startswith("promotion.") and isinstance(v, str) for k, v in tags.items())
    assert tags["promotion.promote"] == "false"
    assert tags["promotion.failed_rules"] == "max_class_drop"
    assert tags["promotion.delta"] == "0.050000"
    assert tags["promotion.worst_class"] == "circle"
    assert tags["promotion.n_images"] == "20"
    assert tags["promotion.reasons"] == "; ".join(decision.reasons)
    assert decide(scores(BASE), None, CFG).to_tags()["promotion.ci_low"] == "none"
    assert json.loads(json.dumps(decision.to_dict()))["reasons"] == list(decision.reasons)


def test_bootstrap_is_deterministic_for_a_seed():
    a, b = BASE + NOISE, BASE
    first = paired_bootstrap(a, b, samples=500, confidence=0.9, seed=7)
    assert paired_bootstrap(a, b, samples=500, confidence=0.9, seed=7) == first
    assert paired_bootstrap(a, b, samples=500, confidence=0.9, seed=8) != first


@pytest.mark.parametrize("gain", [0.25, 0.1])
def test_bootstrap_of_constant_difference_is_that_difference(gain):
    low, high, prob = paired_bootstrap(BASE + gain, BASE, samples=300, confidence=0.95, seed=0)
    assert low == high
    assert low == pytest.approx(gain, abs=1e-12)
    assert prob == 1.0


def test_bootstrap_in_small_blocks_stays_sane(monkeypatch):
    # the package re-exports the function `decide`, which hides the module of the same name
    module = importlib.import_module("segops.promotion.decide")
    monkeypatch.setattr(module, "_BLOCK", 45)  # 2 resamples of 20 images per block, 51 blocks
    low, high, prob = paired_bootstrap(BASE + NOISE, BASE, samples=101, confidence=0.95, seed=0)
    assert -0.2 < low < 0 < high < 0.2 and 0 < prob < 1


def test_bootstrap_interval_covers_a_zero_mean_in_most_seeds():
    covered = false_gains = 0
    for seed in range(50):
        diffs = np.random.default_rng(1000 + seed).normal(0.0, 0.1, size=200)
        low, high, _ = paired_bootstrap(
            diffs, np.zeros(200), samples=200, confidence=0.95, seed=seed
        )
        covered += low <= 0 <= high
        false_gains += low > 0
    # [low, high] is a 90% interval: expect ~45 of 50; one-sided false gains ~5% = 2.5 of 50
    assert 40 <= covered <= 49
    assert false_gains <= 6


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (np.ones(3), np.ones(4), "equal"),
        (np.array([0.5, math.nan]), np.zeros(2), "finite"),
        (np.array([]), np.array([]), "non-empty"),
    ],
)
def test_bootstrap_rejects_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(a, b, samples=100, confidence=0.95, seed=0)


def test_the_primary_metric_names_itself_and_must_match():
    """Instance models are gated on mask AP: the reasons say so; a champion scored by another
    metric is refused; a metric a model kind does not have is a ConfigError."""
    import dataclasses

    from segops.errors import ConfigError
    from segops.promotion.decide import check_metric, primary_metric

    old = dataclasses.replace(scores([0.3] * 30), metric="mask_ap")
    new = dataclasses.replace(scores([0.5] * 30), metric="mask_ap")
    first = decide(new, None, PromotionConfig())
    assert first.metric == "mask_ap" and "(mask AP 0.5000)" in first.reasons[0]
    gated = decide(new, old, PromotionConfig(bootstrap_samples=200))
    assert gated.promote and gated.reasons[0].startswith("mask AP 0.5000 vs champion 0.3000")
    assert gated.to_tags()["promotion.metric"] == "mask_ap"
    with pytest.raises(ValueError, match="scored by mask_ap, the champion by mean_iou"):
        decide(new, scores([0.3] * 30), PromotionConfig())
    assert primary_metric("auto", "instance") == "mask_ap"
    assert primary_metric("auto", "semantic") == "mean_iou"
    check_metric("mean_dice", "instance")
    with pytest.raises(ConfigError, match=r"use one of \['auto', 'mean_iou', 'mean_dice'\]"):
        check_metric("mask_ap", "semantic")
