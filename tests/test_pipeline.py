"""The `retrain` flow end to end under Prefect's test harness, with temporary MLflow and DVC
stores: promote, refuse, promote, roll back; bad data stops everything before training."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from segops.data.shapes import generate_shapes

pytestmark = pytest.mark.slow

MODEL = "segops-test"


def base_overrides(ws: Path) -> list[str]:
    return [
        f"data.root={ws / 'data' / 'shapes'}",
        "data.image_size=32",
        "data.val_fraction=0.34",
        "model.options={width: 8, depth: 2}",
        "train.batch_size=8",
        "train.warmup_epochs=0",
        f"train.out_dir={ws / 'runs' / 'latest'}",
        "evaluate.worst_k=2",
        f"versioning.path={ws / 'data'}",
        f"tracking.artifact_root={ws / 'mlflow' / 'artifacts'}",
        f"promotion.model_name={MODEL}",
        "promotion.bootstrap_samples=500",
    ]


def run_flow(ws: Path, *extra: str) -> dict:
    from flows.retrain import retrain

    return retrain(params=None, overrides=[*base_overrides(ws), *extra], workspace=str(ws))


def champion_version() -> str | None:
    from segops.promotion.registry import champion

    ref = champion(MODEL)
    return ref.version if ref else None


def test_first_promotes_worse_refused_better_promotes_rollback_restores(harness, workspace):
    from segops.promotion.registry import history, rollback

    first = run_flow(workspace, "train.epochs=2")
    assert first["model"]["version"] == "1" and first["decision"]["promote"] is True
    assert champion_version() == "1"
    client = MlflowClient()
    run = client.get_run(first["model"]["run_id"])
    tags = run.data.tags
    assert tags["segops.data.md5"] == first["data"]["md5"] and first["data"]["md5"].endswith(".dir")
    assert tags["segops.validation.passed"] == "true"
    # dvc_workspace(tmp_path) is a git repository without a commit: no commit to name, and a
    # tree that no commit holds counts as dirty.
    assert (tags["segops.git.commit"], tags["segops.git.dirty"]) == ("unknown", "true")
    assert tags["segops.prefect.flow_run_id"] != "none" and "segops.config_hash" in tags
    assert run.data.metrics["mean_iou"] == pytest.approx(first["metrics"]["mean_iou"])
    assert "val_miou" in run.data.metrics and "iou.ellipse" in run.data.metrics
    assert tags["segops.explanations"] == "2 Grad-CAM overlays in eval/explanations"
    explained = client.list_artifacts(run.info.run_id, "eval/explanations")
    assert len(explained) == 2 and all("_gradcam_" in a.path for a in explained)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "lineage")}
    assert artifacts == {"lineage/data.dvc", "lineage/validation.json"}
    assert first["onnx"]["segops.onnx.status"] == "ok", first["onnx"]
    assert float(first["onnx"]["segops.onnx.max_abs_logit_diff"]) < 1e-3
    version1 = client.get_model_version(MODEL, "1")
    assert (
        version1.tags["segops.onnx.status"] == "ok" and "segops.onnx.mean_iou_diff" in version1.tags
    )
    onnx_files = {a.path for a in client.list_artifacts(run.info.run_id, "onnx")}
    assert onnx_files == {"onnx/model.onnx"}
    # exported after the gate: the file was written after promote finished the run
    exported = Path(urlparse(run.info.artifact_uri).path) / "onnx" / "model.onnx"
    assert exported.stat().st_mtime * 1000 >= run.info.end_time

    worse = run_flow(workspace, "train.epochs=1", "train.lr=1e-9")
    assert worse["model"]["version"] == "2" and worse["decision"]["promote"] is False
    assert champion_version() == "1"
    assert worse["data"]["md5"] == first["data"]["md5"] and worse["data"]["pushed"] == 0
    version2 = client.get_model_version(MODEL, "2")
    assert version2.tags["promotion.promote"] == "false" and "challenger" in version2.aliases

    better = run_flow(workspace, "train.epochs=8")
    assert better["decision"]["promote"] is True, better["decision"]["reasons"]
    assert champion_version() == "3"
    report = better["report"]
    assert report["error"] is None and report["link"].endswith("report/model_report.html")
    html = Path(report["html"]).read_text()
    assert f"models:/{MODEL}/3" in html and 'id="comparison"' in html
    assert f"models:/{MODEL}/1" in html  # measured against the champion it replaced
    assert client.get_model_version(MODEL, "3").tags["segops.report"] == report["link"]
    logged = {a.path for a in client.list_artifacts(better["model"]["run_id"], "report")}
    assert logged == {"report/model_report.html"}
    assert 'id="comparison"' not in Path(first["report"]["html"]).read_text()  # no champion yet
    assert f"({report['link']})" in _latest_artifact("model-report")["data"]  # a link artifact

    restored = rollback(MODEL, "test rollback")
    assert restored.version == "1" and champion_version() == "1"
    assert [e["action"] for e in history(MODEL)] == ["promoted", "promoted", "rolled_back"]

    import sys

    cli = [sys.executable, "-m", "segops.cli.main"]
    listing = subprocess.run(
        [*cli, "models", "registered", MODEL],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=True,
    )
    rows = [line for line in listing.stderr.splitlines() if line.startswith("│ ")]
    assert [r.split("│")[1].strip() for r in rows if r.split("│")[1].strip()] == ["1", "2", "3"]
    assert "champion" in rows[0] and "challenger" in listing.stderr
    again = subprocess.run(
        [*cli, "promote", "--rollback", "--set", f"promotion.model_name={MODEL}"],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2 and "no earlier champion" in again.stderr


def _latest_artifact(key: str) -> dict:
    """The newest Prefect artifact with `key`, read through the REST API."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    # Prefect 3.8's client sends nulls this server refuses; ask the REST API directly.
    body = {"artifacts": {"key": {"any_": [key]}}, "sort": "UPDATED_DESC", "limit": 1, "offset": 0}
    (found,) = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body).json()
    return found


def _break_mask_value(root: Path) -> None:
    mask = np.array(Image.open(root / "masks" / "00003.png"))
    mask[0, 0] = 9
    Image.fromarray(mask).save(root / "masks" / "00003.png")


def _break_size(root: Path) -> None:
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "00005.png")


def _break_image(root: Path) -> None:
    (root / "images" / "00007.png").write_bytes(b"broken")


def _leak(root: Path) -> None:
    from segops.config import DataConfig
    from segops.data.manifest import load_dataset

    info = load_dataset(DataConfig(root=root, val_fraction=0.34))
    train_id, val_id = info.split("train")["id"][0], info.split("val")["id"][0]
    for sub in ("images", "masks"):
        shutil.copyfile(root / sub / f"{train_id}.png", root / sub / f"{val_id}.png")


def _missing_mask(root: Path) -> None:
    (root / "masks" / "00002.png").unlink()


def _empty_val_split(root: Path) -> None:
    (root / "splits").mkdir()
    ids = sorted(p.stem for p in (root / "images").glob("*.png"))
    (root / "splits" / "train.txt").write_text("\n".join(ids) + "\n")


def _class_never_in_training(root: Path) -> None:
    with open(root / "classes.txt", "a") as fh:
        fh.write("hexagon\n")


@pytest.mark.parametrize(
    ("breaker", "expectation", "extra"),
    [
        (_break_mask_value, "mask_values_valid", []),
        (_break_size, "sizes_match", []),
        (_break_image, "files_readable", []),
        (_leak, "no_leakage_across_splits", []),
        (_missing_mask, "files_readable", []),
        (_empty_val_split, "required_splits_present", []),
        (_class_never_in_training, "classes_in_train", []),
        (None, "foreground_fraction_in_bounds", ["validation.foreground_fraction=[0.0, 0.01]"]),
    ],
)
def test_bad_data_stops_the_flow_before_training(harness, workspace, breaker, expectation, extra):
    from flows.retrain import ValidationFailed

    if breaker is not None:
        breaker(workspace / "data" / "shapes")
    with pytest.raises(ValidationFailed, match=expectation):
        run_flow(workspace, "train.epochs=1", *extra)
    client = MlflowClient()
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
    assert client.search_model_versions(f"name = '{MODEL}'") == []
    assert not (workspace / "data.dvc").exists()  # nothing was versioned either
    assert expectation in _latest_artifact("validation-report")["data"]


def test_a_failing_step_leaves_champion_and_versions_untouched(harness, workspace):
    run_flow(workspace, "train.epochs=1")
    assert champion_version() == "1"
    # The data validates and is versioned; training then fails once: a config error is the
    # user's to fix, so the train task does not retry it (flows.errors.ONLY_TRANSIENT).
    with pytest.raises(Exception, match="2 values but the dataset has 5 classes"):
        run_flow(workspace, "train.epochs=1", "train.class_weights=[1, 2]")
    client = MlflowClient()
    assert [str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")] == ["1"]
    assert champion_version() == "1"
    failed = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "attributes.status = 'FAILED'"
    )
    assert len(failed) == 1  # one run for the attempt, marked failed


def test_retried_steps_reuse_their_run_and_version(harness, workspace, monkeypatch):
    from segops.config import load_config
    from segops.steps import data, evaluation, registration, setup, training

    cfg = load_config(None, [*base_overrides(workspace), "train.epochs=1"])
    cfg = setup.attempt_config(cfg, "attempt-1")
    assert data.validate_step(cfg).report.success
    version = data.version_step(cfg, str(workspace))
    tags = {"segops.data.md5": version.md5}
    first = training.train_step(cfg, "attempt-1", tags, {})
    again = training.train_step(cfg, "attempt-1", tags, {})  # a retry after, say, a timeout
    assert again.run_id == first.run_id
    evaluation.evaluate_step(cfg, first.run_id, first.checkpoint)
    import segops.serving.onnx as onnx_export

    def broken_export(*args, **kwargs):
        raise RuntimeError("boom: unsupported operator")

    monkeypatch.setattr(onnx_export, "export_onnx", broken_export)
    model = registration.register_step(cfg, first.run_id, first.checkpoint, "attempt-1")
    onnx = evaluation.export_step(cfg, first.run_id, first.checkpoint, model)  # after register
    assert onnx.status == "failed" and "boom" in onnx.error
    tags = MlflowClient().get_model_version(MODEL, model.version).tags
    assert tags["segops.onnx.status"] == "failed"  # recorded with the version, not silent
    retry = registration.register_step(cfg, first.run_id, first.checkpoint, "attempt-1")
    assert retry == model and model.version == "1"
    client = MlflowClient()
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    assert registration.promote_step(cfg, model).promote is True
    assert registration.promote_step(cfg, model).promote is True  # retried: still champion
    assert champion_version() == "1"
    from typer.testing import CliRunner

    from segops.cli.main import app

    sets = [a for s in base_overrides(workspace) for a in ("--set", s)]
    out = CliRunner().invoke(app, ["promote", model.uri, *sets])  # the same step, by hand
    assert out.exit_code == 0, out.output
    assert f"{model.uri}: promoted to champion" in out.output and champion_version() == "1"


def test_two_flows_at_once_finish_with_one_champion(workspace, tmp_path):
    """Two `segops run` processes on the same registry, DVC workspace and data, at once."""
    import os
    import sys

    from segops import tracking
    from segops.config import load_config, save_config

    cfg = load_config(None, [*base_overrides(workspace), "train.epochs=1"])
    save_config(cfg, workspace / "params.yaml")
    tracking.connect(cfg.tracking)  # create the SQLite store once, before parallel work
    procs = []
    for i in range(2):
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"prefect{i}"), "PREFECT_API_URL": ""}
        cmd = [sys.executable, "-m", "segops.cli.main", "run", "--params", "params.yaml"]
        cmd += ["--set", f"train.seed={i}"]  # same config twice would be skipped as unchanged
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=workspace,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    versions = MlflowClient().search_model_versions(f"name = '{MODEL}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    assert len({v.run_id for v in versions}) == 2
    assert champion_version() in ("1", "2")  # the alias is single-valued: exactly one holder
    # The version decided second was judged against the first: the lock serialised them.
    judged = {str(v.version): v.tags["promotion.champion_version"] for v in versions}
    assert sorted(judged.values()) in (["1", "none"], ["2", "none"])


def _new_pairs(dest: Path, n: int) -> Path:
    """`n` fresh shapes samples with ids that the dataset does not have yet."""
    generate_shapes(dest, n=n, size=32, seed=99)
    for sub in ("images", "masks"):
        for path in (dest / sub).glob("*.png"):
            path.rename(path.with_name(f"new{path.name}"))
    return dest


def test_onnx_off_skips_the_export_records_why_and_keeps_the_config_hash(harness, workspace):
    from segops.config import config_hash, load_config

    done = run_flow(workspace, "train.epochs=1", "predict.onnx=false")
    uri = f"models:/{MODEL}/1"
    assert done["onnx"]["segops.onnx.status"] == "skipped", done["onnx"]
    assert f"`segops export {uri} model.onnx`" in done["onnx"]["segops.onnx.reason"]
    client = MlflowClient()
    tags = client.get_model_version(MODEL, "1").tags
    assert tags["segops.onnx.status"] == "skipped" and "predict.onnx" in tags["segops.onnx.reason"]
    assert client.list_artifacts(done["model"]["run_id"], "onnx") == []
    assert champion_version() == "1"  # the gate and the registry do not depend on it
    on, off = (load_config(None, [*base_overrides(workspace), f"predict.onnx={v}"]) for v in (1, 0))
    assert on.predict.onnx is True and off.predict.onnx is False
    assert config_hash(on) == config_hash(off)  # how a model is served, not what it is


def test_unchanged_inputs_skip_training_and_new_data_retrains(harness, workspace, tmp_path):
    from segops.data.add import add_pairs

    first = run_flow(workspace, "train.epochs=1")
    assert first["skipped"] is False and first["model"]["version"] == "1"
    again = run_flow(workspace, "train.epochs=1")
    assert again["skipped"] is True and again["model"] == first["model"]
    assert again["data"]["md5"] == first["data"]["md5"] and again["data"]["pushed"] == 0
    client = MlflowClient()
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 1
    # a flow killed after the gate, before the export, left a decided version without ONNX
    onnx = {k: v for k, v in client.get_model_version(MODEL, "1").tags.items() if ".onnx." in k}
    assert onnx["segops.onnx.status"] == "ok"
    for tag in onnx:
        client.delete_model_version_tag(MODEL, "1", tag)
    caught_up = run_flow(workspace, "train.epochs=1")
    assert caught_up["skipped"] is True and caught_up["model"] == first["model"]
    tags = client.get_model_version(MODEL, "1").tags
    assert tags["segops.onnx.status"] == "ok" and tags.keys() >= onnx.keys()
    add_pairs(_new_pairs(tmp_path / "new", 6), workspace / "data" / "shapes")
    changed = run_flow(workspace, "train.epochs=1")
    assert changed["skipped"] is False and changed["model"]["version"] == "2"
    assert changed["data"]["md5"] != first["data"]["md5"] and changed["data"]["pushed"] > 0
    from flows.retrain import retrain

    forced = retrain(
        params=None,
        overrides=[*base_overrides(workspace), "train.epochs=1"],
        workspace=str(workspace),
        force=True,
    )
    assert forced["skipped"] is False and forced["model"]["version"] == "3"
