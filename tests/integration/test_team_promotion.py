"""Issue 14, proof 5: a promotion race in the team stack. Two users run `segops promote` at
the same instant, each in a clone of their own (own cwd, PREFECT_HOME and code on PYTHONPATH),
sharing nothing but the servers (MLflow on PostgreSQL with S3 artifacts, the Prefect server),
for two different challengers against one champion. The second decision must see the first's
result: the global concurrency limit `promote-<name>` serialises them across hosts and each
reads the champion inside it. The challengers are registered without training: a run with an
evaluation (metrics.json + per_image.csv, as tests/test_promotion_lock.py makes them)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from servers import stop

from tests.integration import team

pytestmark = pytest.mark.slow

MODEL = "segops-race"
SETS = [f"promotion.model_name={MODEL}", "promotion.bootstrap_samples=200"]
# In clone 1: champion v1 (IoU 0.5, decided), challengers v2 (0.7) and v3 (0.8), through the
# tracking server (the evaluations go to S3 through it). Prints the challengers' versions.
REGISTER = """
import json, sys
from pathlib import Path
sys.path.insert(0, "tests")  # this clone's tests: the lock test's registration helper
from test_promotion_lock import _register
from segops import tracking
from segops.config import load_config
from segops.promotion.registry import DECIDED_TAG, record_decision
cfg = load_config(None, json.loads(sys.argv[1]))
store, work, name = tracking.connect(cfg.tracking), Path(sys.argv[2]), cfg.promotion.model_name
first = _register(cfg, store, "champion", 0.5, work, name)
record_decision(first, {DECIDED_TAG: "true"}, True, "the first champion")
refs = [_register(cfg, store, k, m, work, name) for k, m in (("a", 0.7), ("b", 0.8))]
print(json.dumps([r.version for r in refs]))
"""
# `segops promote ARGS` once the go-file exists: the CLI's own entry point, its heavy
# imports paid before, so that both decide within ~20 ms of each other.
PROMOTE = """
import os, sys, time
from segops.cli.main import main
import flows.promotion_lock, segops.promotion.gate, segops.steps.registration
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
sys.argv = ["segops", *sys.argv[2:]]
main()
"""


def _python(script: str, where, env, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=where,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_clones_promote_at_once_and_the_second_sees_the_first(stack, tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.promotion_lock import global_promotion_lock

    _, exports = stack
    clones = [team.clone(tmp_path / "c1"), team.clone(tmp_path / "c2")]
    envs = [team.clone_env(exports, c) for c in clones]
    setup = _python(REGISTER, clones[0], envs[0], json.dumps(SETS), str(tmp_path / "evals"))
    out = setup.communicate(timeout=180)[0]
    assert setup.returncode == 0, out[-3000:]
    a, b = json.loads(out.strip().splitlines()[-1])
    assert (a, b) == ("2", "3")

    go = tmp_path / "go"
    argv = [str(go), "promote", *team.sets(*SETS)]
    procs = [
        _python(PROMOTE, clone, env, *argv[:2], f"models:/{MODEL}/{version}", *argv[2:])
        for clone, env, version in zip(clones, envs, (a, b), strict=True)
    ]
    registry = team.client(exports)
    try:
        for proc in procs:  # both have imported the CLI, Prefect and MLflow
            assert any(line.strip() == "ready" for line in proc.stdout), proc.communicate()[0]
        # Hold the limit as a third host's promotion would: both queue on it; on release,
        # one decides, then the other, whichever gets the slot first.
        with (
            temporary_settings(updates={PREFECT_API_URL: exports["PREFECT_API_URL"]}),
            global_promotion_lock(MODEL),
        ):
            go.touch()
            time.sleep(4)
            waiting = [p.poll() for p in procs]
            undecided = [registry.get_model_version(MODEL, v).tags for v in (a, b)]
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for proc in procs:
            stop(proc)
    assert waiting == [None, None], "a promotion finished while another host held the limit"
    assert not any("promotion.decided_at" in tags for tags in undecided), undecided
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]

    # Both beat v1 and v3 beats v2: whatever the order, v3 ends champion, and the later
    # decision names the earlier challenger as the champion it was judged against when the
    # earlier one passed (v2 first: v2 then v3 promoted; v3 first: v2 is not).
    tags = {v: registry.get_model_version(MODEL, v).tags for v in (a, b)}
    earlier, later = sorted(tags, key=lambda v: tags[v]["promotion.decided_at"])
    assert tags[earlier]["promotion.champion_version"] == "1"
    assert tags[earlier]["promotion.promote"] == "true"
    assert tags[later]["promotion.champion_version"] == earlier  # saw the first's result
    assert tags[later]["promotion.promote"] == ("true" if later == b else "false")
    said = {v: o for v, o in zip((a, b), outputs, strict=True)}
    assert f"models:/{MODEL}/{b}: promoted to champion" in said[b], said[b][-3000:]
    verdict = "promoted to champion" if earlier == a else "not promoted"
    assert f"models:/{MODEL}/{a}: {verdict}" in said[a], said[a][-3000:]
    holders = [v for v in ("1", a, b) if "champion" in registry.get_model_version(MODEL, v).aliases]
    assert holders == [b]  # exactly one champion
