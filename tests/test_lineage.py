"""Lineage of a registered version: audit (intact, then one broken link at a time), reproduce
(identical weights on CPU), history, and "nothing changed" detection.

The chain is made once by the functions the Prefect tasks call (`segops.steps`)
in a git + DVC workspace with its own MLflow store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from segops.config import Config
from segops.data.shapes import generate_shapes

pytestmark = pytest.mark.slow

MODEL = "segops-lineage"
URI = f"models:/{MODEL}@champion"


def _git(ws: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True)


def _overrides(ws: Path) -> list[str]:
    return [
        f"data.root={ws / 'data' / 'shapes'}",
        "data.image_size=32",
        "data.val_fraction=0.3",
        "model.options={width: 4, depth: 2}",
        "train.epochs=2",
        "train.batch_size=8",
        "train.warmup_epochs=0",
        "train.deterministic=true",
        f"train.out_dir={ws / 'runs' / 'latest'}",
        "evaluate.worst_k=2",
        f"versioning.path={ws / 'data'}",
        f"tracking.artifact_root={ws / 'mlflow' / 'artifacts'}",
        f"promotion.model_name={MODEL}",
        "promotion.bootstrap_samples=200",
    ]


def _make_version(cfg: Config, ws: Path, key: str) -> dict:
    """validate -> version -> train -> evaluate -> register -> promote, as the flow does."""
    from segops.steps import data, evaluation, registration, setup, training
    from segops.steps.lineage import lineage_record

    contract = setup.registry_step(cfg)
    validated = data.validate_step(cfg)
    version = data.version_step(cfg, str(ws))
    git = setup.source_state(cfg, str(ws))
    tags = lineage_record(version, validated, f"flow-run-{key}", git, contract).to_tags()
    artifacts = {"lineage/data.dvc": version.dvc_text, "lineage/validation.json": validated.json}
    trained = training.train_step(cfg, key, tags, artifacts)
    evaluation.evaluate_step(cfg, trained.run_id, trained.checkpoint)
    model = registration.register_step(cfg, trained.run_id, trained.checkpoint, key)
    registration.promote_step(cfg, model)
    return {"model": model, "data": version}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A promoted version 1 of MODEL, made in a committed git + DVC workspace."""
    import mlflow

    from segops.config import load_config
    from segops.steps.setup import attempt_config
    from segops.versioning import configure_remote, ensure_workspace

    tmp = tmp_path_factory.mktemp("lineage")
    ws = tmp / "ws"
    ws.mkdir()
    _git(ws, "init", "-q")
    ensure_workspace(ws)
    configure_remote(ws, "local", str(tmp / "remote"))
    (ws / "README").write_text("lineage test workspace\n")
    _git(ws, "add", "-A")
    _git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    generate_shapes(ws / "data" / "shapes", n=40, size=32, seed=5)
    saved_env, saved_cwd = os.environ["MLFLOW_TRACKING_URI"], os.getcwd()
    uri = f"sqlite:///{tmp}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    os.chdir(ws)
    cfg = load_config(None, _overrides(ws))
    config = attempt_config(cfg, "attempt-a")
    made = _make_version(config, ws, "attempt-a")
    yield SimpleNamespace(ws=ws, tmp=tmp, remote=tmp / "remote", config=config, uri=uri, **made)
    os.chdir(saved_cwd)
    mlflow.set_tracking_uri(None)  # this also unsets MLFLOW_TRACKING_URI: restore it after
    os.environ["MLFLOW_TRACKING_URI"] = saved_env


def test_audit_of_an_intact_chain_passes_every_link(chain, tmp_path):
    from segops.lineage.audit import audit

    report = audit(URI, chain.ws)
    status = {link.name: link.status for link in report.links}
    assert report.ok and report.version_uri == f"models:/{MODEL}/1"
    assert status.pop("prefect.flow_run") == "unchecked"  # no PREFECT_API_URL in tests
    assert set(status.values()) == {"ok"}, report.to_markdown()
    assert list(status) == [
        "model_version",
        "mlflow_run",
        "weights",
        "contract",
        "data.dvc",
        "data.remote",
        "dataset",
        "git.commit",
        "config",
        "validation",
        "environment",
        "metrics",
        "promotion",
    ]
    assert report.record["data.md5"] == chain.data.md5
    assert report.record["prefect.flow_run_id"] == "flow-run-attempt-a"
    assert report.record["promotion"]["promote"] == "true"
    json_path, md_path = report.write(tmp_path)
    assert '"ok": true' in json_path.read_text() and "intact" in md_path.read_text()


def _cli(*args: str, env_uri: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": env_uri, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "segops.cli.main", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_audit_cli_writes_reports_and_exit_status(chain, tmp_path):
    proc = _cli("audit", URI, "--out", str(tmp_path / "ok"), env_uri=chain.uri, cwd=chain.ws)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "ok" / "audit.md").is_file() and "lineage intact" in proc.stderr
    gone = _cli("audit", f"models:/{MODEL}/9", env_uri=chain.uri, cwd=chain.ws)
    assert gone.returncode == 1 and "model_version" in gone.stderr


def _artifact(chain, relpath: str) -> Path:
    root = chain.ws / "mlflow" / "artifacts"
    (found,) = [p for p in root.rglob(Path(relpath).name) if p.as_posix().endswith(relpath)]
    return found


class _Broken:
    """Context managers that break one link and put it back."""

    @staticmethod
    def remote(chain):
        moved = chain.remote.with_name("remote-away")
        chain.remote.rename(moved)
        yield
        moved.rename(chain.remote)

    @staticmethod
    def artifact(chain):
        path = _artifact(chain, "lineage/validation.json")
        kept = path.read_bytes()
        path.unlink()
        yield
        path.write_bytes(kept)

    @staticmethod
    def commit(chain):
        client, run_id = MlflowClient(), chain.model.run_id
        kept = client.get_run(run_id).data.tags["segops.git.commit"]
        client.set_tag(run_id, "segops.git.commit", "0" * 40)
        yield
        client.set_tag(run_id, "segops.git.commit", kept)

    @staticmethod
    def weights(chain):
        path = next((chain.ws / "mlflow" / "artifacts").rglob("weights.pt"))
        kept = path.read_bytes()
        path.write_bytes(kept[:-1] + bytes([kept[-1] ^ 1]))
        yield
        path.write_bytes(kept)


@pytest.mark.parametrize(
    ("breaker", "link"),
    [
        (_Broken.remote, "data.remote"),
        (_Broken.artifact, "validation"),
        (_Broken.commit, "git.commit"),
        (_Broken.weights, "weights"),
    ],
)
def test_audit_names_the_one_broken_link(chain, breaker, link, tmp_path):
    from segops.lineage.audit import audit

    steps = breaker(chain)
    next(steps)
    try:
        report = audit(URI, chain.ws)
        proc = _cli("audit", URI, "--out", str(tmp_path), env_uri=chain.uri, cwd=chain.ws)
    finally:
        next(steps, None)
    assert report.broken == [link], report.to_markdown()
    assert proc.returncode == 1 and f"broken: {link}" in proc.stderr
    assert link in (tmp_path / "audit.json").read_text()
    assert audit(URI, chain.ws).ok  # put back: intact again


def test_reproduce_restores_data_and_gives_identical_weights_on_cpu(chain, tmp_path):
    from segops.lineage.reproduce import reproduce

    report = reproduce(URI, tmp_path / "repro")
    assert report.weights_identical and report.max_weight_diff == 0.0, report.to_markdown()
    assert report.config_hash_match and report.dataset_hash_match
    assert report.data_md5 == chain.data.md5
    assert Path(report.restored_to, "shapes", "classes.txt").is_file()
    assert report.metrics["mean_iou"]["diff"] == 0.0 and "iou.ellipse" in report.metrics
    assert report.max_metric_diff == 0.0
    assert (
        (tmp_path / "repro" / "reproduce.md")
        .read_text()
        .startswith(f"# Reproduction of models:/{MODEL}/1: identical weights")
    )


def test_reproduce_refuses_a_used_folder_and_a_missing_remote(chain, tmp_path):
    from segops.lineage.reproduce import ReproduceError, reproduce
    from segops.versioning import VersioningError

    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(ReproduceError, match="not empty"):
        reproduce(URI, tmp_path / "used")
    steps = _Broken.remote(chain)
    next(steps)
    try:
        with pytest.raises(VersioningError, match="lacks"):
            reproduce(URI, tmp_path / "new")
    finally:
        next(steps, None)
    assert not (tmp_path / "new" / "workspace" / "data").exists()  # nothing half-restored


def test_unchanged_step_finds_the_version_only_for_same_data_config_and_code(chain, monkeypatch):
    import dataclasses

    from segops.lineage import code
    from segops.steps.attempt import unchanged_step
    from segops.steps.setup import attempt_config, with_outputs_in

    same = unchanged_step(chain.config, chain.data)
    assert same is not None and same.ref.version == "1" and same.decided
    assert same.attempt_key == "attempt-a" and Path(same.out_dir).name == "attempt-a"
    assert same.metrics["mean_iou"] > 0  # copied from the run when it was registered
    lr = chain.config.train.model_copy(update={"lr": 0.01})
    assert unchanged_step(chain.config.model_copy(update={"train": lr}), chain.data) is None
    moved = attempt_config(chain.config, "elsewhere")  # locations do not count
    assert unchanged_step(moved, chain.data).ref.version == "1"
    assert unchanged_step(with_outputs_in(chain.config, "/elsewhere"), chain.data) is not None
    other_data = dataclasses.replace(chain.data, dataset_md5="0" * 32 + ".dir")
    assert unchanged_step(chain.config, other_data) is None
    other_path = dataclasses.replace(chain.data, dataset="data/other")
    assert unchanged_step(chain.config, other_path) is None
    # another dataset beside it changes the md5 of data/, not this dataset's identity
    assert unchanged_step(chain.config, dataclasses.replace(chain.data, md5="0" * 32 + ".dir"))
    monkeypatch.setattr(code, "code_version", lambda: "edited")
    assert unchanged_step(chain.config, chain.data) is None


def test_history_of_the_chain_and_its_cli(chain):
    from segops.lineage.history import model_history

    events = model_history(MODEL)
    assert [(e["event"], e["version"]) for e in events] == [
        ("registered", "1"),
        ("decided", "1"),
        ("promoted", "1"),
    ]
    assert events[0]["data"] == chain.data.md5 and events[0]["flow_run"] == "flow-run-attempt-a"
    proc = _cli("models", "history", MODEL, "--json", env_uri=chain.uri, cwd=chain.ws)
    assert proc.returncode == 0 and proc.stdout.count("\n") == 3


def test_build_history_orders_registrations_decisions_and_moves():
    from segops.lineage.history import build_history

    def version(v: str, created: int, **tags: str) -> dict:
        return {
            "version": v,
            "created": created,
            "updated": created,
            "run_id": f"r{v}",
            "tags": tags,
        }

    versions = [
        version(
            "1",
            1_000,
            **{"promotion.promote": "true", "promotion.decided_at": "1970-01-01T00:00:02+00:00"},
        ),
        version("2", 3_000, **{"promotion.promote": "false", "promotion.reasons": "worse"}),
        version("3", 5_000),  # registered, never decided
    ]
    moves = [
        {"version": "1", "action": "promoted", "reason": "first", "at": "1970-01-01T00:00:02Z"},
        {"version": "1", "action": "rolled_back", "reason": "bad", "at": "1970-01-01T00:00:06Z"},
    ]
    events = [(e["event"], e["version"]) for e in build_history(versions, moves)]
    assert events == [
        ("registered", "1"),
        ("decided", "1"),
        ("promoted", "1"),
        ("registered", "2"),
        ("decided", "2"),  # no decided_at: the version's update time (3 s) stands in
        ("registered", "3"),
        ("rolled_back", "1"),
    ]


def test_code_version_follows_the_sources(tmp_path):
    from segops.lineage.code import code_version

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    first = code_version((tmp_path / "pkg",))
    assert code_version((tmp_path / "pkg",)) == first
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert code_version((tmp_path / "pkg",)) != first
    shutil.rmtree(tmp_path / "pkg")
    assert code_version((tmp_path / "pkg",)) != first  # an absent root hashes as empty


def test_predict_with_a_registered_model(chain, tmp_path):
    images = sorted((chain.ws / "data" / "shapes" / "images").glob("*.png"))[:3]
    src = tmp_path / "in"
    src.mkdir()
    for path in images:
        shutil.copy(path, src / path.name)
    proc = _cli(
        "predict", str(src), str(tmp_path / "out"), "--model", URI, env_uri=chain.uri, cwd=chain.ws
    )
    assert proc.returncode == 0, proc.stderr
    summary = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert len(summary) == 4 and summary[0].startswith("image,width,height,tiled,frac_background")
    assert (tmp_path / "out" / f"{images[0].stem}_overlay.png").is_file()
    wrong = _cli(
        "predict",
        str(src),
        str(tmp_path / "x"),
        "--model",
        f"models:/{MODEL}@nope",
        env_uri=chain.uri,
        cwd=chain.ws,
    )
    assert wrong.returncode == 2 and "not in the registry" in wrong.stderr


def test_export_a_registered_model_to_onnx_with_a_parity_check(chain, tmp_path):
    out = tmp_path / "champion.onnx"
    args = ["export", URI, str(out), "--dataset", str(chain.ws / "data" / "shapes")]
    proc = _cli(*args, env_uri=chain.uri, cwd=chain.ws)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 1000 and "parity on" in proc.stderr
    diff = float(proc.stderr.split("max |logit diff| ")[1].split(",")[0])
    assert diff < 1e-3


def test_deep_audit_finds_an_overwritten_remote_object_the_plain_audit_passes(chain, tmp_path):
    import json

    from segops.lineage.audit import audit

    md5 = chain.data.md5
    manifest = chain.remote / "files" / "md5" / md5[:2] / md5[2:]
    oid = json.loads(manifest.read_text())[0]["md5"]
    path = chain.remote / "files" / "md5" / oid[:2] / oid[2:]
    kept = path.read_bytes()
    path.chmod(0o644)  # DVC stores objects read-only
    path.write_bytes(kept[:-1] + bytes([kept[-1] ^ 1]))  # same size, other bytes
    try:
        plain = audit(URI, chain.ws)
        deep = audit(URI, chain.ws, deep=True)
        proc = _cli("audit", URI, "--deep", "--out", str(tmp_path), env_uri=chain.uri, cwd=chain.ws)
    finally:
        path.write_bytes(kept)
    assert plain.ok and "data.deep" not in [link.name for link in plain.links]
    assert deep.broken == ["data.deep"], deep.to_markdown()
    (link,) = [link for link in deep.links if link.name == "data.deep"]
    assert f"corrupt: {oid}" in link.detail and "re-hashed in" in link.detail
    assert proc.returncode == 1 and "broken: data.deep" in proc.stderr
    assert audit(URI, chain.ws, deep=True).ok  # put back: intact again


def test_evaluate_a_registered_model_and_see_its_run_folder(chain, tmp_path):
    """`segops evaluate models:/...` scores the version on the dataset it was trained on,
    prints the per-class table; `segops models registered` shows dataset and run folder."""
    proc = _cli(
        "evaluate",
        f"models:/{MODEL}@champion",
        "--out",
        str(tmp_path / "eval"),
        env_uri=chain.uri,
        cwd=chain.ws,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "val split: mean IoU" in out and "ellipse" in out  # per-class rows
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["protocol"]["resolution"] == "original" and metrics["images"] > 0
    proc = _cli(
        "models",
        "registered",
        "--set",
        f"promotion.model_name={MODEL}",
        env_uri=chain.uri,
        cwd=chain.ws,
    )
    assert proc.returncode == 0, proc.stderr
    run_dir, out = str(chain.config.train.out_dir), proc.stdout + proc.stderr
    assert Path(run_dir).name in out and "data/shapes" in out


def test_run_summary_names_each_figure_once(capsys):
    from segops.cli.report import print_run_result

    result = {
        "model": {"uri": "models:/m/2"},
        "metrics": {"mean_iou": 0.9},
        "decision": {
            "promote": True,
            "metric": "mean_iou",
            "challenger_mean": 0.9,
            "reasons": ["first version"],
        },
        "data": {"md5": "a.dir", "dataset": "data/x", "dataset_md5": "b.dir"},
    }
    print_run_result(result)
    out = " ".join(capsys.readouterr().err.split())  # the CLI's console: stderr, wrapped
    assert out.count("mean IoU") == 1 and "dataset data/x (b.dir)" in out


def test_model_json_beside_the_weights_carries_the_contract(chain):
    from segops.promotion.registry import resolve, version_tags
    from segops.record import LineageRecord
    from segops.serving.contract import read_contract

    beside = list(Path(str(chain.config.train.out_dir)).rglob("model.json"))
    assert len(beside) == 1
    assert (beside[0].parent / "best.pt").is_file()
    contract = read_contract(beside[0])
    tags = version_tags(resolve(URI))
    assert contract["lineage"] == {
        "available": True,
        "tags": LineageRecord.from_tags(tags).to_tags(),
    }
    assert contract["lineage"]["tags"]["segops.data.md5"] == chain.data.md5
    assert contract["metrics"]["mean_iou"] == pytest.approx(float(tags["metrics.mean_iou"]))
    assert contract["input"]["channels"] == 3
    assert contract["input"]["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    assert contract["output"]["classes"] == contract["classes"]
    assert set(contract["output"]["pixels"]) == {f"pixels_{c}" for c in contract["classes"]}
    assert contract["versions"]["torch"] and contract["versions"]["segops"] == "0.1.0"
