"""Offline-safe defaults are set in the code path: a flow imported outside `make` is quiet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from segops.quiet import QUIET_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def environment_after_importing_the_flow(**user: str) -> dict[str, str | None]:
    """Each QUIET_DEFAULTS variable as `import flows.retrain` leaves it, in a process whose
    environment sets none of them but `user` (and names no Prefect server)."""
    drop = {*QUIET_DEFAULTS, "PREFECT_API_URL"}
    env = {k: v for k, v in os.environ.items() if k not in drop} | user
    code = "import json, os, flows.retrain; from segops.quiet import QUIET_DEFAULTS as q; "
    code += "print(json.dumps({k: os.environ.get(k) for k in q}))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_importing_the_flow_sets_every_quiet_default():
    assert len(QUIET_DEFAULTS) >= 7
    assert environment_after_importing_the_flow() == QUIET_DEFAULTS


def test_importing_the_flow_keeps_the_users_own_values():
    found = environment_after_importing_the_flow(DVC_NO_ANALYTICS="0")
    assert found == QUIET_DEFAULTS | {"DVC_NO_ANALYTICS": "0"}  # the user's choice wins
