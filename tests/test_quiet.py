"""Offline-safe defaults are set in the code path: a flow imported outside `make` is quiet."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from segops.quiet import QUIET_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_flow_sets_quiet_defaults_and_keeps_the_users_values():
    env = {k: v for k, v in os.environ.items() if k not in QUIET_DEFAULTS}
    env["DVC_NO_ANALYTICS"] = "0"  # the user's own choice wins
    code = "import os, flows.retrain; print(os.environ['MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR'],"
    code += " os.environ['MLFLOW_DISABLE_TELEMETRY'], os.environ['DVC_NO_ANALYTICS'])"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["false", "true", "0"]
