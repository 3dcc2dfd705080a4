"""Evaluation: a model scored on a split (per-image scores, tables, plots, HTML report);
the metrics themselves are pure functions in `segops.metrics`."""
