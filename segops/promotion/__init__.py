"""Promotion: the pure decision whether a challenger replaces the champion (`decide`).

Registry side effects (register, alias, rollback) live in `segops.promotion.registry`, which
imports mlflow; importing this package does not.
"""

from segops.promotion.decide import PromotionDecision, Scores, decide, paired_bootstrap

__all__ = ["PromotionDecision", "Scores", "decide", "paired_bootstrap"]
