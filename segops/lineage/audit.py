"""`segops audit`: follow a registered version's lineage and check that every link resolves.

The chain: model version -> MLflow run -> dataset md5 and `.dvc` text -> data on the DVC
remote -> git commit -> resolved config -> validation report -> Prefect flow run ->
environment -> metrics -> promotion decision, plus the registered weights' hash. Each link is
one small check; a broken link is named, with what to do, and the audit goes on with the rest.
`deep` adds `data.deep`: every object of the data on the remote is read and re-hashed.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from segops import tracking
from segops.config import build_config, config_hash
from segops.lineage.data_links import data_deep, data_remote, dataset, deep_check, dvc_file
from segops.lineage.links import BROKEN, OK, TAG, UNCHECKED, WARN, AuditReport, Chain, Link
from segops.promotion.registry import RegistryError, resolve, version_tags
from segops.record import LineageError, LineageRecord
from segops.serving.contract import ContractError, read_contract
from segops.train.checkpoint import file_sha256

__all__ = ["BROKEN", "OK", "UNCHECKED", "WARN", "AuditReport", "Link", "audit", "deep_check"]


def audit(model_uri: str, repo: str | Path = ".", deep: bool = False) -> AuditReport:
    """Audit registered version `model_uri` (`models:/name/3` or `models:/name@champion`).

    `repo` is the git repository whose history must hold the recorded commit; `deep` re-hashes
    every object of the data version on the DVC remote (link `data.deep`).
    """

    try:
        ref = resolve(model_uri)
    except RegistryError as exc:
        return AuditReport(model_uri, "", (Link("model_version", BROKEN, str(exc)),))
    links = [Link("model_version", OK, f"{ref.uri} was made by run {ref.run_id}")]
    run = tracking.find_run_or_none(ref.run_id)
    if run is None:
        links.append(Link("mlflow_run", BROKEN, f"run {ref.run_id} is gone from the store"))
        return AuditReport(model_uri, ref.uri, tuple(links))
    links.append(Link("mlflow_run", OK, f"run {ref.run_id} ({run['status']})"))
    with tempfile.TemporaryDirectory(prefix="segops-audit-") as tmp:
        chain = Chain(ref, version_tags(ref), run, Path(tmp), Path(repo).resolve())
        for check in CHECKS:
            links.append(check(chain))
            if deep and check is data_remote:
                links.append(data_deep(chain))
    return AuditReport(model_uri, ref.uri, tuple(links), chain.record)


def _weights(chain: Chain) -> Link:

    expected = chain.tag("weights_sha256")
    chain.record["weights_sha256"] = expected
    try:
        local = tracking.download_model(chain.version.uri, chain.scratch / "model")
        weights = next(local.rglob("weights.pt"))
    except Exception as exc:  # the store raises several types for a missing artifact
        return Link("weights", BROKEN, f"the model's files cannot be fetched: {exc}")
    got = file_sha256(weights)
    if got != expected:
        return Link("weights", BROKEN, f"weights.pt hashes to {got}, the run recorded {expected}")
    return Link("weights", OK, f"weights.pt sha256 {got[:16]}... matches the run")


def _contract(chain: Chain) -> Link:
    """The model's `model.json` (fetched by `_weights`) carries the same lineage as the
    version's tags; a model logged before contracts existed is a warning, not a break."""

    found = sorted((chain.scratch / "model").rglob("model.json"))
    if not found:
        return Link("contract", BROKEN, "the registered model has no model.json beside weights")
    try:
        contract = read_contract(found[0])
    except ContractError as exc:
        return Link("contract", WARN, str(exc))
    chain.record["contract.schema"] = contract["schema"]
    lineage = contract["lineage"]
    if not lineage.get("available"):
        return Link("contract", WARN, f"model.json records no lineage: {lineage.get('reason')}")
    try:
        tagged = LineageRecord.from_tags(chain.version_tags, chain.version.uri).to_tags()
    except LineageError as exc:
        return Link("contract", BROKEN, str(exc))
    differ = sorted(k for k, v in tagged.items() if lineage["tags"].get(k) != v)
    if differ:
        return Link("contract", BROKEN, f"model.json and the version's tags differ on {differ}")
    return Link("contract", OK, f"model.json ({contract['schema']}) matches the lineage tags")


def _git(chain: Chain) -> Link:
    commit, dirty = chain.tag("git.commit"), chain.tag("git.dirty")
    chain.record |= {
        "git.commit": commit,
        "git.dirty": dirty,
        "code.version": chain.tag("code.version"),
    }
    found = subprocess.run(
        ["git", "cat-file", "-e", f"{commit}^{{commit}}"],
        cwd=chain.repo,
        capture_output=True,
        timeout=30,
    )
    if not commit or commit == "unknown" or found.returncode != 0:
        return Link("git.commit", BROKEN, f"commit {commit or '(none)'} is not in {chain.repo}")
    if dirty != "false":
        note = "the tree was dirty: uncommitted changes are not in the commit (see code.version)"
        return Link("git.commit", WARN, f"{commit[:12]} exists; {note}")
    return Link("git.commit", OK, f"{commit[:12]} exists, tree was clean")


def _config(chain: Chain) -> Link:

    expected = chain.tag("config_hash")
    chain.record |= {"config_hash": expected, "seed": chain.tag("seed")}
    local = chain.artifact("config.yaml")
    if local is None:
        return Link("config", BROKEN, "artifact config.yaml is missing from the run")
    cfg = build_config(yaml.safe_load(local.read_text()), "config.yaml of the run")
    chain.record["config"] = cfg.to_dict()
    got = config_hash(cfg)
    if got != expected:
        return Link("config", BROKEN, f"config.yaml hashes to {got}, the run recorded {expected}")
    return Link("config", OK, f"config.yaml matches config hash {got[:16]}...")


def _validation(chain: Chain) -> Link:
    passed = chain.tag("validation.passed")
    chain.record["validation.passed"] = passed
    local = chain.artifact("lineage/validation.json")
    if local is None:
        return Link("validation", BROKEN, "artifact lineage/validation.json is missing")
    report = json.loads(local.read_text())
    checks = len(report.get("checks", []))
    if not report.get("success") or passed != "true":
        return Link("validation", BROKEN, f"the recorded validation did not pass ({checks} checks)")
    return Link("validation", OK, f"passed {checks} Great Expectations checks")


def _flow_run(chain: Chain) -> Link:
    run_id = chain.tag("prefect.flow_run_id")
    chain.record["prefect.flow_run_id"] = run_id
    if not run_id or run_id == "none":
        return Link("prefect.flow_run", BROKEN, "no Prefect flow-run id was recorded")
    api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not api:
        note = "set PREFECT_API_URL to the server that ran it to check"
        return Link("prefect.flow_run", UNCHECKED, f"flow run {run_id} recorded; {note}")
    try:
        with urllib.request.urlopen(f"{api}/flow_runs/{run_id}", timeout=10) as resp:
            state = json.loads(resp.read()).get("state_name", "?")
    except OSError as exc:
        return Link("prefect.flow_run", BROKEN, f"flow run {run_id} not found at {api}: {exc}")
    return Link("prefect.flow_run", OK, f"flow run {run_id} ({state}) at {api}")


def _environment(chain: Chain) -> Link:
    env = {k.removeprefix(TAG + "env."): v for k, v in chain.run["tags"].items() if ".env." in k}
    chain.record["environment"] = env
    if not env.get("torch"):
        return Link("environment", BROKEN, "no environment (python, torch, CUDA) was recorded")
    text = ", ".join(f"{k} {env.get(k, '?')}" for k in ("python", "torch", "cuda", "gpu"))
    return Link("environment", OK, text)


def _metrics(chain: Chain) -> Link:
    recorded = chain.run["metrics"].get("mean_iou")
    chain.record["metrics"] = {
        k: v
        for k, v in chain.run["metrics"].items()
        if k.startswith(("mean_", "iou.", "pixel", "mask_", "ap."))
    }
    local = chain.artifact("eval/metrics.json")
    if local is None or recorded is None:
        return Link("metrics", BROKEN, "eval/metrics.json or the mean_iou metric is missing")
    found = json.loads(local.read_text())["mean_iou"]
    if abs(found - recorded) > 1e-9:
        return Link("metrics", BROKEN, f"eval/metrics.json says {found}, the run {recorded}")
    return Link("metrics", OK, f"mean IoU {recorded:.4f}, eval artifacts present")


def _decision(chain: Chain) -> Link:
    tags = chain.version_tags
    decision = {
        k.removeprefix("promotion."): v for k, v in tags.items() if k.startswith("promotion.")
    }
    chain.record["promotion"] = decision
    if "promote" not in decision:
        fix = f"run `segops promote {chain.version.uri}`"
        return Link("promotion", BROKEN, f"no promotion decision on the version: {fix}")
    verdict = "promoted" if decision["promote"] == "true" else "not promoted"
    return Link("promotion", OK, f"{verdict}: {decision.get('reasons', '')[:200]}")


CHECKS: tuple[Callable[[Chain], Link], ...] = (
    _weights,
    _contract,
    dvc_file,
    data_remote,
    dataset,
    _git,
    _config,
    _validation,
    _flow_run,
    _environment,
    _metrics,
    _decision,
)
