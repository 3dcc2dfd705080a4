"""Evaluation: confusion matrix, metrics as pure functions, per-image scores, reports, plots."""
