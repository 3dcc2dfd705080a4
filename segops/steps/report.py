"""The pipeline's last step: the registered version's HTML model report."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from segops.config import Config
from segops.record import PREFIX as LINEAGE
from segops.record import TAGS
from segops.steps.records import ModelReport

if TYPE_CHECKING:
    from segops.evaluate.html_report import Comparison
    from segops.promotion.registry import ModelRef

# lazy imports: the flow module (and `segops run`, which imports it) must not pay for torch,
# MLflow, DVC and ONNX before a step runs (docs/development.md "Imports").


# What the report shows beside the lineage record: facts of the run that are not lineage.
RUN_FACTS = ("config_hash", "seed", "weights_sha256", "env.torch")


def _report_lineage(run_tags: dict[str, str], version_tags: dict[str, str]) -> dict[str, str]:
    """The lineage and decision values a model report shows: the run's lineage record
    (`segops.record.TAGS`, the fields it has), its `RUN_FACTS` and the gate's decision."""
    shown = {tag[len(LINEAGE) :]: run_tags[tag] for tag in TAGS.values() if tag in run_tags}
    shown |= {k: run_tags[LINEAGE + k] for k in RUN_FACTS if LINEAGE + k in run_tags}
    for key in ("promote", "reasons", "champion_version"):
        if f"promotion.{key}" in version_tags:
            shown[f"promotion.{key}"] = version_tags[f"promotion.{key}"]
    return shown


def _comparison(
    cfg: Config, ref: ModelRef, checkpoint: str, holder: str, eval_dir: Path, tmp: str
) -> Comparison | None:
    """The challenger against the champion it was measured against (None for the first)."""
    from segops.evaluate.html_report import compare_with_champion
    from segops.inference import load_trained
    from segops.promotion.gate import champion_eval_dir
    from segops.promotion.registry import resolve
    from segops.serving.registered import load_registered

    if holder in ("", "none"):
        return None
    champ = resolve(f"models:/{ref.name}/{holder}")
    data_version = json.loads((eval_dir / "metrics.json").read_text())["dataset_hash"]
    champ_dir = champion_eval_dir(champ, cfg, data_version, tmp)
    found = compare_with_champion(
        load_trained(checkpoint), load_registered(champ.uri), cfg, eval_dir, champ_dir
    )
    # Name both by registry URI: the champion's weights were read from a temporary download.
    return dataclasses.replace(found, champion=champ.uri, challenger=ref.uri)


def report_step(cfg: Config, ref: ModelRef, checkpoint: str) -> ModelReport:
    """Write the version's self-contained HTML report (with the champion comparison), log it
    to the run and tag the version with it. A failure is recorded on the version, not raised:
    the model is already registered and decided, and a missing report must not undo that."""
    from segops import tracking
    from segops.evaluate.html_report import write_model_report
    from segops.promotion.registry import set_version_tags, version_tags

    tracking.connect(cfg.tracking)
    eval_dir = Path(cfg.train.out_dir) / "eval"
    try:
        tags = version_tags(ref)
        with tempfile.TemporaryDirectory(prefix="segops-report-") as tmp:
            holder = tags.get("promotion.champion_version", "none")
            comparison = _comparison(cfg, ref, checkpoint, holder, eval_dir, tmp)
            lineage = _report_lineage(tracking.run_summary(ref.run_id)["tags"], tags)
            out = Path(cfg.train.out_dir) / "report" / "model_report.html"
            html = write_model_report(eval_dir, out, f"{ref.uri}", lineage, comparison)
        tracking.log_file(ref.run_id, html, "report")
        link = tracking.artifact_link(ref.run_id, "report/model_report.html")
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
        set_version_tags(ref, {LINEAGE + "report.error": error})
        return ModelReport(html=None, link=None, error=error)
    set_version_tags(ref, {LINEAGE + "report": link})
    return ModelReport(html=str(html), link=link, error=None)
