"""The fast paths of `segops run` (issue 17): the config check without torch, the Prefect API
settings, a frozen heap and a fast exit that still completes every file and keeps the status."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from segops.cli.lifecycle import prefect_api_line
from segops.config import load_config
from segops.errors import ConfigError
from segops.models.catalog import MODEL_KINDS
from segops.quiet import quiet_defaults
from segops.train.precheck import check_model_fast

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_run_help_and_the_default_config_check_do_not_import_torch():
    out = run_python("""
        import sys
        from typer.testing import CliRunner
        from segops.cli.main import app
        from segops.cli.common import config
        from segops.promotion.decide import check_metric
        from segops.train.precheck import check_model_fast
        from pathlib import Path
        assert CliRunner().invoke(app, ["run", "--help"]).exit_code == 0
        cfg = config(Path("params.yaml"), ["model.name=segnet"])
        check_metric(cfg.promotion.metric, check_model_fast(cfg))
        print(sorted(m for m in ("torch", "torchvision", "mlflow", "prefect") if m in sys.modules))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_static_catalog_is_the_registry():
    from segops.models import list_models

    assert {entry.name: entry.kind for entry in list_models(kind=None)} == MODEL_KINDS


def test_the_fast_check_refuses_what_the_full_check_refuses():
    assert check_model_fast(load_config(None, [])) == "semantic"
    with pytest.raises(ConfigError, match="unknown model"):
        check_model_fast(load_config(None, ["model.name=unet3d"]))
    with pytest.raises(ConfigError, match="instance annotations"):
        check_model_fast(load_config(None, ["model.name=maskrcnn_resnet50_fpn"]))
    with pytest.raises(ConfigError, match=r"bad model\.options"):  # options: the meta-device build
        check_model_fast(load_config(None, ["model.options={widht: 8}"]))


def test_a_running_prefect_server_gets_no_ephemeral_settings(monkeypatch):
    key = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    quiet_defaults()
    assert key not in os.environ
    assert "http://127.0.0.1:4200/api (a running server" in prefect_api_line()
    monkeypatch.setenv("PREFECT_API_URL", "")
    quiet_defaults()
    assert os.environ[key] == "90"
    assert "temporary local one" in prefect_api_line()


BLANK_API_FLOW = """
    from segops.quiet import quiet_defaults
    quiet_defaults()  # what `segops run` and the flow modules do before importing Prefect
    from prefect import flow, task

    @task
    def one() -> int:
        return 1

    @flow
    def two() -> int:
        return one() + one()

    print("result", two())
"""


@pytest.mark.slow
def test_a_blank_prefect_api_url_runs_on_a_temporary_api_without_event_errors(tmp_path):
    # `export PREFECT_API_URL=` made Prefect's events worker fail on every task state: an
    # ERROR and a traceback each (66 in one `segops run`), though the run itself completed.
    home = tmp_path / "prefect"
    env = {"PREFECT_API_URL": "", "PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "INFO"}
    out = run_python(BLANK_API_FLOW, **env)
    assert out.returncode == 0, out.stderr
    assert "result 2" in out.stdout
    log = out.stdout + out.stderr
    assert "Starting temporary server" in log
    assert "ERROR" not in log and "Traceback" not in log, log[-3000:]


FAST_EXIT = """
    import atexit, gc, logging, sys
    from segops.cli.lifecycle import arm_fast_exit, freeze_heap, leave, own_process
    freeze_heap()  # a test calling the app in-process: the heap is left alone
    assert gc.get_freeze_count() == 0
    own_process()
    freeze_heap()
    log = logging.getLogger("x")
    log.addHandler(logging.FileHandler(sys.argv[1] + "/run.log"))
    log.setLevel(logging.INFO)
    out = open(sys.argv[1] + "/out.txt", "w")  # an open, buffered file closed by its handler
    atexit.register(lambda: (out.write("x" * 100_000), out.close()))
    for i in range(2000):
        log.info("line %d", i)
    sys.stdout.write("y" * 200_000)
    print("frozen", gc.get_freeze_count() > 0, file=sys.stderr)
    arm_fast_exit()
    leave(int(sys.argv[2]))
"""


def test_the_command_starts_the_temporary_api_only_without_a_server():
    code = "from flows.runtime import temporary_api; start = temporary_api(); print(start is None)"
    assert run_python(code, PREFECT_API_URL="http://127.0.0.1:9/api").stdout.strip() == "True"
    out = run_python(code.replace("print(start is None)", "print(start.__qualname__)"))
    assert out.stdout.strip() == "SubprocessASGIServer.start", out.stderr


LOGGING_FLOW = """
    import sys
    from segops.quiet import quiet_defaults
    quiet_defaults()
    from prefect import flow, get_run_logger
    from prefect.runtime import flow_run
    from segops.cli.lifecycle import arm_fast_exit, leave, own_process
    import flows.runtime

    own_process()

    @flow
    def talk() -> str:
        for i in range(100):
            get_run_logger().info("line %d", i)
        return flow_run.id

    print(talk())
    if sys.argv[1] == "drain":
        flows.runtime.drain()
    arm_fast_exit()
    leave(0)  # what `segops run` does once the flow has returned
"""

READ_LOGS = """
    import sys
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        runs = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[sys.argv[1]]))
        logs = client.read_logs(runs, limit=200, offset=0)
    print(sum(log.message.startswith("line ") for log in logs))
"""


@pytest.mark.slow
def test_the_fast_exit_delivers_the_runs_logs_to_the_api_first(tmp_path):
    # os._exit skips threading's exit hooks, where Prefect drains its log and event workers;
    # `segops run` drains them (flows.runtime.drain) while the temporary API still answers.
    env = {
        "PREFECT_API_URL": "",
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    code = "import sys; sys.argv = ['x', 'drain']\n" + textwrap.dedent(LOGGING_FLOW)
    ran = run_python(code, **env)
    assert ran.returncode == 0, ran.stderr
    assert "retryable exception" not in ran.stderr and "Traceback" not in ran.stderr
    run_id = ran.stdout.split()[-1]
    code = f"import sys; sys.argv = ['x', {run_id!r}]\n" + textwrap.dedent(READ_LOGS)
    read = run_python(code, **env)  # a new temporary API on the same database
    assert read.returncode == 0, read.stderr
    assert read.stdout.split()[-1] == "100"


WARM_START = """
    import sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from segops.cli.lifecycle import freeze_heap, own_process
    own_process()
    spans = {}

    def start_api():  # stands for Prefect's temporary API: a wait this thread only polls
        spans["during"] = (time.monotonic(), threading.current_thread().name)
        time.sleep(1.0)
        spans["during_end"] = time.monotonic()

    freeze_heap(("slow_module",), start_api)
    import slow_module
    print(slow_module.THREAD != threading.current_thread().name,
          slow_module.STARTED < spans["during_end"] and spans["during"][0] < slow_module.ENDED)
    try:
        freeze_heap(("no_such_module_here",), lambda: None)
    except ModuleNotFoundError as exc:
        print("raised", exc.name)
"""

SLOW_MODULE = """
import threading, time
STARTED, THREAD = time.monotonic(), threading.current_thread().name
time.sleep(0.8)
ENDED = time.monotonic()
"""


def test_the_flow_imports_overlap_the_temporary_api_start_and_failures_surface(tmp_path):
    (tmp_path / "slow_module.py").write_text(SLOW_MODULE)
    code = f"import sys; sys.argv = ['x', {str(tmp_path)!r}]\n" + textwrap.dedent(WARM_START)
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    # imported on another thread, at the same time as the start: not one after the other
    assert out.stdout.splitlines() == ["True True", "raised no_such_module_here"]


@pytest.mark.parametrize("status", [0, 3])
def test_the_fast_exit_completes_files_and_keeps_the_status(tmp_path, status):
    code = f"import sys; sys.argv = ['x', {str(tmp_path)!r}, '{status}']\n"
    out = run_python(code + textwrap.dedent(FAST_EXIT))
    assert out.returncode == status, out.stderr
    assert out.stdout == "y" * 200_000
    assert "frozen True" in out.stderr
    assert (tmp_path / "out.txt").read_text() == "x" * 100_000
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert len(lines) == 2000 and lines[-1] == "line 1999"


def test_segops_exits_as_before_when_not_armed(tmp_path):
    refused = subprocess.run(
        [sys.executable, "-m", "segops.cli.main", "run", "--set", "train.threads=0"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2, refused.stderr
    assert "train.threads" in refused.stderr
