"""`segops predict` from and to `s3://` prefixes on a real S3 server (the conftest's `s3`:
`rclone serve s3` on loopback): both engines write the same bytes as into a folder, a rerun
resumes, nothing is left half-written, the input's identity is a hash of its keys, sizes and
ETags, bad input is refused before any work."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import scoring_images, tiny_config
from servers import free_port

from segops.errors import DatasetError
from segops.scoring.job import JobOptions, predict_job
from segops.scoring.source import checkpoint_source

pytestmark = pytest.mark.slow
N = 30  # a few dozen: the folder test covers a few hundred


@pytest.fixture(scope="module")
def images(s3, fs, tmp_path_factory) -> Path:
    """N images (a few of odd sizes) and one corrupt file, in a folder and uploaded through
    the S3 API to s3://scoring/in."""
    folder = scoring_images(tmp_path_factory.mktemp("images"), N, 10)
    for path in folder.iterdir():
        fs.put_file(str(path), f"scoring/in/{path.name}")
    fs.pipe_file("scoring/in/notes.txt", b"not an image: not listed")
    return folder


@pytest.fixture(scope="module")
def source(shapes_root, tmp_path_factory):
    from segops.train.loop import train

    cfg = tiny_config(shapes_root, tmp_path_factory.mktemp("run"), "train.epochs=1")
    return checkpoint_source(train(cfg).best_checkpoint)


@pytest.fixture(scope="module")
def ray_cluster(s3):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def objects(fs, prefix: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {Path(k).name: fs.cat_file(k) for k in sorted(fs.find(f"scoring/{prefix}"))}


def test_both_engines_write_to_s3_what_the_folder_gets_and_resume(
    source, images, fs, tmp_path, ray_cluster
):
    folder = predict_job(source, images, tmp_path / "folder", JobOptions(batch_size=8))
    local = predict_job(source, "s3://scoring/in", "s3://scoring/local", JobOptions(batch_size=8))
    remote = predict_job(source, "s3://scoring/in/", "s3://scoring/ray", JobOptions("ray", 8))
    assert folder.scored == local.scored == remote.scored == N
    assert folder.errors == local.errors == remote.errors == 1
    assert local.summary_csv == "s3://scoring/local/summary.csv"
    expected = {p.name: p.read_bytes() for p in (tmp_path / "folder").iterdir()}
    assert len(expected) == 2 * N + 2  # masks, overlays, summary.csv, errors.csv; no temp file
    ours, theirs = objects(fs, "local"), objects(fs, "ray")
    assert ours.keys() == theirs.keys() == expected.keys()
    assert [name for name in expected if not expected[name] == ours[name] == theirs[name]] == []
    assert b"broken.png," in ours["errors.csv"]

    # resume: two images lose their mask; a rerun scores those two only
    summary = ours["summary.csv"]
    fs.rm(["scoring/local/img003_mask.png", "scoring/local/img017_mask.png"])
    again = predict_job(source, "s3://scoring/in", "s3://scoring/local", JobOptions(batch_size=8))
    assert (again.scored, again.skipped, again.errors) == (2, N - 2, 1)
    assert objects(fs, "local") == ours and fs.cat_file("scoring/local/summary.csv") == summary
    redo = predict_job(source, "s3://scoring/in", "s3://scoring/local", JobOptions(overwrite=True))
    assert (redo.scored, redo.skipped) == (N, 0)


def test_input_identity_hashes_keys_sizes_and_etags(images, fs, tmp_path):
    from segops.scoring.steps import _local_copies, input_identity

    first = input_identity("s3://scoring/in")
    assert (first.kind, first.images, first.input) == (
        "s3-listing",
        N + 1,
        "s3://scoring/in",
    )
    assert input_identity("s3://scoring/in/") == first
    fs.pipe_file("scoring/in/img005.png", (images / "img006.png").read_bytes())  # replaced
    changed = input_identity("s3://scoring/in")
    fs.put_file(str(images / "img005.png"), "scoring/in/img005.png")  # put back
    assert changed.hash != first.hash and input_identity("s3://scoring/in") == first
    fs.pipe_file("scoring/tables/summary.csv", b"image\n")
    fs.pipe_file("scoring/tables/errors.csv", b"image,error\n")
    copies = _local_copies("s3://scoring/tables", ["summary.csv", "errors.csv"], tmp_path)
    assert [Path(p).read_bytes() for p in copies] == [b"image\n", b"image,error\n"]


def test_bad_s3_input_is_refused_before_any_work(s3, images, tmp_path, monkeypatch):
    missing_model = {"checkpoint": str(tmp_path / "none.pt")}  # loading it would fail otherwise
    start = time.monotonic()
    with pytest.raises(DatasetError, match="s3://scoring/nothing: no images"):
        predict_job(missing_model, "s3://scoring/nothing", tmp_path / "o")
    with pytest.raises(DatasetError, match="no bucket 'nobucket'"):
        predict_job(missing_model, "s3://nobucket/in", tmp_path / "o")
    with pytest.raises(DatasetError, match="no bucket 'nobucket'"):  # the output's bucket
        predict_job(missing_model, "s3://scoring/in", "s3://nobucket/out")
    assert not (tmp_path / "o").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "segops.cli.main", "predict", "s3://scoring/nothing", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "no images" in proc.stderr
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(DatasetError, match=r"S3 endpoint .* unreachable"):
        predict_job(missing_model, "s3://scoring/in", tmp_path / "o")
    assert time.monotonic() - start < 30


def test_the_score_steps_record_a_scoring_of_prefixes(source, images, fs, own_mlflow, tmp_path):
    import mlflow

    from segops.config import load_config
    from segops.scoring import steps
    from segops.scoring.records import Pinned, ScoreSummary
    from segops.tracking.scoring import SCORE_TAGS

    config = load_config(None, [f"tracking.artifact_root={tmp_path / 'art'}"])
    client = mlflow.MlflowClient()
    run_id = client.create_run(client.create_experiment("trained")).info.run_id
    client.create_registered_model("s3-score")
    client.create_model_version("s3-score", (tmp_path / "model").as_uri(), run_id)
    uri = "models:/s3-score/1"
    pinned = Pinned(uri, "s3-score", "1", run_id, uri, True, "1", mlflow.get_tracking_uri())
    identity = steps.input_identity("s3://scoring/in")
    summary = predict_job(source, "s3://scoring/in", "s3://scoring/flow", JobOptions(batch_size=8))
    recorded = steps.record_step(config, pinned, identity, ScoreSummary(summary, "local"))
    run = client.get_run(recorded)
    assert run.data.tags[SCORE_TAGS["out"]] == "s3://scoring/flow"
    assert run.data.tags[SCORE_TAGS["input_kind"]] == "s3-listing"
    assert run.data.tags[SCORE_TAGS["input_hash"]] == identity.hash
    assert run.data.tags[SCORE_TAGS["champion"]] == "true"
    assert run.data.metrics["scored"] == N and run.data.metrics["errors"] == 1
    logged = client.download_artifacts(recorded, "scoring/summary.csv", str(tmp_path))
    assert Path(logged).read_bytes() == fs.cat_file("scoring/flow/summary.csv")


def test_a_prefix_probes_its_endpoint_once_and_still_lists_fresh(s3, fs, monkeypatch):
    """`S3Prefix.listing` probes the endpoint on its first call only (a resume lists the output
    again, a job lists input and output: one probe each); listings stay fresh; an unreachable
    endpoint is still a clear error, on every call (a failed probe is not remembered)."""
    import pickle

    from segops.data import location

    probed: list[str] = []
    probe = location.probe_endpoint

    def counting(url: str, *args, **kwargs) -> None:
        probed.append(url)
        probe(url, *args, **kwargs)

    monkeypatch.setattr(location, "probe_endpoint", counting)
    fs.pipe_file("scoring/probed/a.png", b"a")
    prefix = location.S3Prefix("s3://scoring/probed")
    assert [row[0] for row in prefix.listing()] == ["a.png"]
    fs.pipe_file("scoring/probed/b.png", b"b")
    assert prefix.names() == {"a.png", "b.png"}  # no listing cache: the new object is seen
    prefix.prepare()
    assert probed == ["s3://scoring/probed"]
    copy = pickle.loads(pickle.dumps(prefix))  # as a Ray actor gets it: probes once itself
    assert copy.names() == {"a.png", "b.png"} and len(probed) == 2

    dead = location.S3Prefix("s3://scoring/probed", f"http://127.0.0.1:{free_port()}")
    for _ in range(2):
        with pytest.raises(DatasetError, match=r"S3 endpoint http://127.0.0.1:\d+ unreachable"):
            dead.listing()
    assert len(probed) == 4
