"""`segops.tracking.connect` against a real `mlflow server` on loopback: artifacts go where the
server says (its proxied `--artifacts-destination`), never to the client's disk."""

from __future__ import annotations

import pytest
from servers import BIN, free_port, running

from segops.config import TrackingConfig
from segops.tracking import artifact_location, connect, download_artifact, log_text

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A tracking server: sqlite backend, artifacts proxied to a folder of its own."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1", "--backend-store-uri", f"sqlite:///{root}/server.db"]
    cmd += ["--artifacts-destination", str(root / "destination")]
    url = f"http://127.0.0.1:{port}"
    with running(cmd, url + "/health", root / "server.log", cwd=root):
        yield url, root / "destination"


def test_artifact_location_is_local_only_for_local_stores(tmp_path):
    local = artifact_location("sqlite:///x.db", "mlflow/artifacts", tmp_path)
    assert local == (tmp_path / "mlflow/artifacts").resolve().as_uri()
    assert artifact_location("sqlite:///x.db", "s3://b/a", tmp_path) == "s3://b/a"
    assert artifact_location("http://h:5000", "mlflow/artifacts", tmp_path) is None
    assert artifact_location("https://h", "s3://b/a", tmp_path) is None


def test_artifacts_land_on_the_server_not_the_client(server, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    url, destination = server
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    monkeypatch.chdir(client_dir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    try:
        store = connect(TrackingConfig(experiment="remote"), base=client_dir)
        experiment = MlflowClient(url).get_experiment(store.experiment_id)
        assert experiment.artifact_location.startswith("mlflow-artifacts:")
        run = MlflowClient(url).create_run(store.experiment_id)
        log_text(run.info.run_id, "hello", "notes/hello.txt")
        on_server = list(destination.rglob("hello.txt"))
        assert len(on_server) == 1 and on_server[0].read_text() == "hello"
        assert not any(p.is_file() for p in client_dir.rglob("*"))  # nothing on the client
        got = download_artifact(run.info.run_id, "notes/hello.txt", tmp_path / "back")
        assert got is not None and got.read_text() == "hello"
    finally:
        mlflow.set_tracking_uri(None)  # also unsets the env var: monkeypatch restores it
