"""The train step: train inside the attempt's MLflow run, resuming its checkpoint on a retry."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from segops.config import Config
from segops.record import PREFIX, world_tags
from segops.steps.records import Trained
from segops.train.callbacks import EpochPrinter

# lazy imports: the flow module (and `segops run`, which imports it) must not pay for torch,
# MLflow, DVC and ONNX before a step runs (docs/development.md "Imports").


def train_step(
    cfg: Config, attempt_key: str, tags: Mapping[str, str], artifacts: Mapping[str, str]
) -> Trained:
    """Train inside the MLflow run of `attempt_key` (resuming its checkpoint on a retry).

    `tags` are the lineage tags (`LineageRecord.to_tags()`); `artifacts` maps artifact paths
    to text (the `.dvc` file) or local files (the validation report) to attach as lineage.
    """
    from segops import tracking
    from segops.train.launch import plan_launch
    from segops.train.run import train_configured

    plan = plan_launch(cfg)  # a world this machine cannot run fails here, before the run opens
    store = tracking.connect(cfg.tracking)
    where = {PREFIX + "run_dir": str(cfg.train.out_dir)}  # found again by a resuming rerun
    where |= world_tags(plan.world_size, plan.backend, cfg.train.batch_size)
    run_id = tracking.open_run(store, cfg, attempt_key, dict(tags) | where)
    for name, value in artifacts.items():
        if Path(value).is_file():
            tracking.log_file(run_id, value, str(Path(name).parent))
        else:
            tracking.log_text(run_id, value, name)
    callbacks = [tracking.MlflowMetrics(store, run_id), EpochPrinter()]
    try:
        result = train_configured(cfg, resume=True, callbacks=callbacks)
    except Exception:
        tracking.finish_run(run_id, failed=True)
        raise
    tracking.log_file(run_id, result.history_csv)
    tracking.log_file(run_id, Path(result.out_dir) / "config.yaml")
    found = {PREFIX + "dataset_hash": result.dataset_hash, PREFIX + "run_dir": result.out_dir}
    tracking.set_tags(run_id, found)
    return Trained(run_id=run_id, result=result)
