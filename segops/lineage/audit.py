"""`segops audit`: follow a registered version's lineage and check that every link resolves.

The chain: model version -> MLflow run -> dataset md5 and `.dvc` text -> data on the DVC
remote -> git commit -> resolved config -> validation report -> Prefect flow run ->
environment -> metrics -> promotion decision, plus the registered weights' hash. Each link is
one small check; a broken link is named, with what to do, and the audit goes on with the rest.
`deep` adds `data.deep`: every object of the data on the remote is read and re-hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

OK, WARN, UNCHECKED, BROKEN = "ok", "warn", "unchecked", "broken"
TAG = "segops."


@dataclass(frozen=True)
class Link:
    name: str
    status: str  # ok | warn (resolves, with a caveat) | unchecked (cannot be checked here) | broken
    detail: str


@dataclass(frozen=True)
class AuditReport:
    model_uri: str  # as asked (may name an alias)
    version_uri: str  # models:/name/version it resolved to ("" if it did not)
    links: tuple[Link, ...]
    record: dict[str, Any] = field(default_factory=dict)  # the lineage values that were read

    @property
    def broken(self) -> list[str]:
        """Names of the links that no longer resolve."""
        return [link.name for link in self.links if link.status == BROKEN]

    @property
    def ok(self) -> bool:
        return not self.broken

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: verdict, broken link names, every link and the lineage record."""
        return {
            "model_uri": self.model_uri,
            "version_uri": self.version_uri,
            "ok": self.ok,
            "broken": self.broken,
            "links": [asdict(link) for link in self.links],
            "record": self.record,
        }

    def to_markdown(self) -> str:
        """A human-readable report: verdict, one table row per link, the record."""
        verdict = "intact" if self.ok else f"BROKEN ({', '.join(self.broken)})"
        rows = [f"| {link.name} | {link.status} | {link.detail} |" for link in self.links]
        record = "\n".join(f"- **{k}**: `{v}`" for k, v in self.record.items() if k != "config")
        return (
            f"# Lineage audit of {self.version_uri or self.model_uri}: {verdict}\n\n"
            "| link | status | detail |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
            f"## Record\n\n{record}\n"
        )

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write audit.json and audit.md into `out_dir`; returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "audit.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (out / "audit.md").write_text(self.to_markdown())
        return out / "audit.json", out / "audit.md"


@dataclass
class _Chain:
    """What the checks share: the version, its run's tags and a scratch folder."""

    version: Any  # promotion.registry.ModelRef
    version_tags: dict[str, str]
    run: dict[str, Any]  # tracking.find_run_or_none
    scratch: Path
    repo: Path
    record: dict[str, Any] = field(default_factory=dict)

    def tag(self, key: str) -> str:
        return self.run["tags"].get(TAG + key, "")

    def artifact(self, path: str) -> Path | None:
        from segops import tracking

        return tracking.download_artifact(self.version.run_id, path, self.scratch / "artifacts")


def audit(model_uri: str, repo: str | Path = ".", deep: bool = False) -> AuditReport:
    """Audit registered version `model_uri` (`models:/name/3` or `models:/name@champion`).

    `repo` is the git repository whose history must hold the recorded commit; `deep` re-hashes
    every object of the data version on the DVC remote (link `data.deep`).
    """
    from segops import tracking
    from segops.promotion.registry import RegistryError, resolve, version_tags

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
        chain = _Chain(ref, version_tags(ref), run, Path(tmp), Path(repo).resolve())
        for check in CHECKS:
            links.append(check(chain))
            if deep and check is _data_remote:
                links.append(_data_deep(chain))
    return AuditReport(model_uri, ref.uri, tuple(links), chain.record)


def _weights(chain: _Chain) -> Link:
    from segops import tracking
    from segops.train.checkpoint import file_sha256

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


def _dvc_file(chain: _Chain) -> Link:
    from segops.versioning import VersioningError, dvc_text_md5

    md5 = chain.tag("data.md5")
    chain.record |= {"data.md5": md5, "data.path": chain.tag("data.path")}
    local = chain.artifact("lineage/data.dvc")
    if local is None:
        return Link("data.dvc", BROKEN, "artifact lineage/data.dvc is missing from the run")
    text = local.read_text()
    chain.record["data.dvc"] = text
    try:
        found = dvc_text_md5(text, "lineage/data.dvc")
    except VersioningError as exc:
        return Link("data.dvc", BROKEN, str(exc))
    if found != md5:
        return Link("data.dvc", BROKEN, f"lineage/data.dvc names {found}, the tag says {md5}")
    return Link("data.dvc", OK, f"dataset version {md5}")


def _data_remote(chain: _Chain) -> Link:
    from segops.versioning import VersioningError, remote_has

    url, text = chain.tag("data.remote_url"), chain.record.get("data.dvc")
    chain.record["data.remote_url"] = url
    if not text or not url:
        return Link("data.remote", BROKEN, "no .dvc text or remote URL recorded to fetch from")
    try:
        present = remote_has(text, url)
    except VersioningError as exc:
        return Link("data.remote", BROKEN, str(exc))
    if not present:
        return Link(
            "data.remote",
            BROKEN,
            f"remote {url} lacks objects of {chain.record['data.md5']}: push the version again "
            "from a workspace that has it (segops.versioning.version_dataset)",
        )
    return Link("data.remote", OK, f"every object of the dataset is on {url}")


def _data_deep(chain: _Chain) -> Link:
    url, text = chain.tag("data.remote_url"), chain.record.get("data.dvc")
    if not text or not url:
        return Link("data.deep", UNCHECKED, "no .dvc text or remote URL recorded (data.remote)")
    return deep_check(text, url)


def deep_check(dvc_text: str, remote_url: str) -> Link:
    """Read every object of the data version on the remote, md5 it and compare with its name:
    link `data.deep`, broken (naming them) when objects are corrupt or missing."""
    from segops.versioning import VersioningError, _manifest, _remote_odb, dvc_text_md5

    start = time.monotonic()
    try:
        md5 = dvc_text_md5(dvc_text)
        odb = _remote_odb(remote_url)
        entries = _manifest(odb, md5)  # None when missing or not matching its hash
    except (VersioningError, OSError, ValueError) as exc:
        return Link("data.deep", BROKEN, f"cannot read the manifest on {remote_url}: {exc}")
    if entries is None:
        return Link("data.deep", BROKEN, f"manifest {md5} on {remote_url} is missing or corrupt")
    oids = sorted({e["md5"] for e in entries})
    with ThreadPoolExecutor(8) as pool:
        got = dict(zip(oids, pool.map(lambda oid: _object_md5(odb, oid), oids), strict=True))
    took = f"{len(oids) + 1} objects re-hashed in {time.monotonic() - start:.2f} s"
    bad = {"corrupt": [o for o in oids if got[o] not in (o, None)]}
    bad["missing"] = [o for o in oids if got[o] is None]
    if not any(bad.values()):
        return Link("data.deep", OK, f"every object on {remote_url} matches its hash ({took})")
    named = "; ".join(
        f"{k}: {', '.join(v[:10])}{' ...' * (len(v) > 10)}" for k, v in bad.items() if v
    )
    fix = "delete the corrupt objects from the remote, then version the data again"
    return Link("data.deep", BROKEN, f"{remote_url}: {named} ({took}). Fix: {fix}")


def _object_md5(odb: Any, oid: str) -> str | None:
    """md5 of the object stored under `oid` (read in 1 MiB chunks); None when it is absent."""
    digest = hashlib.md5()
    try:
        with odb.fs.open(odb.oid_to_path(oid), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def _git(chain: _Chain) -> Link:
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


def _config(chain: _Chain) -> Link:
    from segops.config import build_config, config_hash

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


def _validation(chain: _Chain) -> Link:
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


def _flow_run(chain: _Chain) -> Link:
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


def _environment(chain: _Chain) -> Link:
    env = {k.removeprefix(TAG + "env."): v for k, v in chain.run["tags"].items() if ".env." in k}
    chain.record["environment"] = env
    if not env.get("torch"):
        return Link("environment", BROKEN, "no environment (python, torch, CUDA) was recorded")
    text = ", ".join(f"{k} {env.get(k, '?')}" for k in ("python", "torch", "cuda", "gpu"))
    return Link("environment", OK, text)


def _metrics(chain: _Chain) -> Link:
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


def _decision(chain: _Chain) -> Link:
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


CHECKS: tuple[Callable[[_Chain], Link], ...] = (
    _weights,
    _dvc_file,
    _data_remote,
    _git,
    _config,
    _validation,
    _flow_run,
    _environment,
    _metrics,
    _decision,
)
