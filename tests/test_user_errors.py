"""A user's error inside a flow (a `SegopsError`: the message says what to do) is tried once
and printed as one line, never a traceback; other failures keep Prefect's retries and their
tracebacks. DVC's failures name the dataset and the right fix."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import dvc_workspace
from prefect import flow, task
from prefect.states import Failed

from flows.errors import ONLY_TRANSIENT, is_transient, quiet_user_errors, retry_unless_user_error
from segops.config import VersioningConfig
from segops.data.shapes import generate_shapes
from segops.errors import ConfigError, DatasetError
from segops.versioning import VersioningError, version_dataset

ROOT = Path(__file__).resolve().parents[1]
OPTION = "model.options: unknown option 'depht' (use width, levels)"


def raised_from(cause: Exception) -> VersioningError:
    """A user's error raised from `cause` (`raise VersioningError(...) from cause`)."""
    err = VersioningError("dvc push of data to remote 'store' failed: connection reset")
    err.__cause__ = cause
    return err


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (RuntimeError("CUDA error: unspecified launch failure"), True),
        (OSError("disk I/O error"), True),
        (ConfigError("train.class_weights has 2 values but the dataset has 5 classes"), False),
        (DatasetError("data/shapes already holds another dataset"), False),
        (VersioningError("dvc add of data failed: ..."), False),
        (raised_from(ConnectionResetError("reset by peer")), True),  # the remote went away
        (raised_from(TimeoutError("timed out")), True),
        (raised_from(PermissionError("read-only")), False),
    ],
)
def test_only_transient_failures_are_retried(exc, retried):
    assert is_transient(exc) is retried
    assert retry_unless_user_error(None, None, Failed(data=exc)) is retried


def wrapped_while_handling(cause: Exception, hide: bool) -> Exception:
    """What segops' code does: a user-facing error raised in the `except` block of a library's
    error (`from exc`, or `from None`, which hides the cause only from the printout)."""
    try:
        try:
            raise cause
        except Exception as exc:
            if hide:
                raise DatasetError("dataset s3://b/p: S3 endpoint unreachable") from None
            raise VersioningError("dvc push of data to remote 'store' failed") from exc
    except Exception as outer:
        return outer


def library_errors() -> list[Exception]:
    """Real exceptions of the libraries segops talks to the network through, none of them a
    subclass of Python's ConnectionError or TimeoutError."""
    import botocore.exceptions
    import requests
    import urllib3
    from dvc.exceptions import UploadError

    return [
        botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        requests.exceptions.ConnectionError("Max retries exceeded"),
        urllib3.exceptions.MaxRetryError(None, "/api/2.0/mlflow/runs/get", "refused"),
        httpx.ConnectError("All connection attempts failed"),
        UploadError(3),
        ConnectionRefusedError(111, "Connection refused"),  # the endpoint probe's OSError
    ]


@pytest.mark.parametrize("hide", [False, True])
def test_a_user_error_raised_over_a_network_failure_is_retried(hide):
    for cause in library_errors():
        exc = wrapped_while_handling(cause, hide)
        assert is_transient(exc), (type(cause), hide)
        # two levels down: a VersioningError re-wrapped (`.dvc/config.local` put back)
        outer = wrapped_while_handling(exc, hide=False)
        assert is_transient(outer), type(cause)
    assert not is_transient(wrapped_while_handling(PermissionError("read-only"), hide))
    assert not is_transient(wrapped_while_handling(ValueError("bad md5"), hide))


def test_a_crashed_torchrun_group_is_retried_a_missing_result_is_not():
    from segops.train.launch import DistributedCrash, DistributedError

    assert is_transient(DistributedCrash("torchrun (world size 2, gloo) exited with status 1"))
    assert not is_transient(DistributedError("exited with status 0; no result.json"))


def logged(logger: logging.Logger, exc: Exception) -> str:
    """What `logger.exception` writes for `exc` through a plain formatter."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(logging.Formatter().format(record))
    logger.addHandler(handler)
    try:
        try:
            raise exc
        except Exception as raised:
            logger.exception("Task run failed with exception: %r", raised)
    finally:
        logger.removeHandler(handler)
    return "\n".join(lines)


@pytest.mark.parametrize("name", ["prefect.task_runs", "prefect.flow_runs"])
def test_prefect_logs_a_user_error_as_its_message_and_others_with_their_traceback(name):
    quiet_user_errors()
    quiet_user_errors()  # installed once however often it is called
    logger = logging.getLogger(name)
    assert sum(type(f).__name__ == "UserErrorWithoutTraceback" for f in logger.filters) == 1
    user = logged(logger, ConfigError(OPTION))
    assert user == f"Task run failed with exception: {ConfigError(OPTION)!r}"
    other = logged(logger, RuntimeError("boom"))
    assert "Traceback (most recent call last)" in other and "RuntimeError: boom" in other


def test_a_retried_task_runs_a_user_error_once_and_a_transient_failure_again(harness, caplog):
    calls = {"user": 0, "flaky": 0}

    @task(retries=2, **ONLY_TRANSIENT)
    def user_error() -> None:
        calls["user"] += 1
        raise ConfigError(OPTION)

    @task(retries=2, **ONLY_TRANSIENT)
    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionResetError("the store went away")
        return "done"

    @flow
    def both() -> str:
        assert flaky() == "done"
        user_error()
        return "unreachable"

    quiet_user_errors()
    caplog.set_level(logging.ERROR)
    with pytest.raises(ConfigError, match="unknown option 'depht'"):
        both()
    assert calls == {"user": 1, "flaky": 3}
    logged = caplog.text  # Prefect's task and flow run lines, each with its traceback if any
    assert logged.count("unknown option 'depht'") >= 2 and "Traceback" not in logged


def git_tracked_data(tmp_path: Path) -> Path:
    """A workspace whose data/ git tracks (`git add data`): `dvc add data` refuses it."""
    ws = dvc_workspace(tmp_path)
    generate_shapes(ws / "data" / "shapes", n=12, size=16, seed=4)
    subprocess.run(["git", "add", "data"], cwd=ws, check=True)
    return ws


def test_dvc_add_failure_is_one_line_naming_the_dataset_and_the_fix(tmp_path):
    ws = git_tracked_data(tmp_path)
    with pytest.raises(VersioningError) as failed:
        version_dataset(ws, VersioningConfig(remote="local", push=False), "data/shapes")
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("dvc add of data (dataset data/shapes) failed: ")
    assert "Git tracks files in data/, which DVC versions" in message
    assert "`git rm -r --cached data`" in message and "is not tracked by git" not in message
    assert not (ws / "data.dvc").exists()


def test_a_dvc_file_inside_the_tree_gets_its_own_fix(tmp_path):
    ws = dvc_workspace(tmp_path)
    generate_shapes(ws / "data" / "shapes", n=4, size=16, seed=4)
    (ws / "data" / "shapes.dvc").write_text("outs:\n- md5: 0123456789abcdef.dir\n  path: shapes\n")
    with pytest.raises(VersioningError) as failed:
        version_dataset(ws, VersioningConfig(remote="local", push=False), "data/shapes")
    message = str(failed.value)
    assert "\n" not in message and "(dataset data/shapes)" in message
    assert "A .dvc file or dvc.yaml stage tracks part of data/: `dvc remove` it" in message


@pytest.mark.slow
def test_segops_run_prints_a_user_error_in_a_retried_task_once_as_one_line(
    harness, tmp_path, own_mlflow
):
    """`segops run` where `dvc add` must fail (git tracks data/): the version-data task, which
    retries transient failures, runs once; the output has the error line, no traceback."""
    from prefect.settings import PREFECT_API_URL

    ws = git_tracked_data(tmp_path)
    api = PREFECT_API_URL.value()
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_LOGGING_LEVEL": "INFO"}
    sets = ["data.root=data/shapes", "data.image_size=16", "promotion.model_name=segops-errors"]
    sets += [f"tracking.artifact_root={tmp_path / 'artifacts'}"]
    cmd = [sys.executable, "-m", "segops.cli.main", "run", "--params", str(ROOT / "params.yaml")]
    cmd += [a for s in sets for a in ("--set", s)]
    out = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    printed = out.stdout + out.stderr
    assert out.returncode == 2, printed
    assert "Traceback" not in printed and "Retry" not in printed, printed
    (error,) = [line for line in printed.splitlines() if line.startswith("error: ")]
    assert error.startswith("error: dvc add of data (dataset data/shapes) failed: ")
    assert error.endswith("(`git rm -r --cached data`, then commit), then run again.")
    body = {"task_runs": {"name": {"like_": "version-data"}}, "sort": "EXPECTED_START_TIME_DESC"}
    runs = httpx.post(f"{api}/task_runs/filter", json={**body, "limit": 1}).json()
    assert [(r["state"]["type"], r["run_count"]) for r in runs] == [("FAILED", 1)]
    assert not (ws / "data.dvc").exists()
