"""`segops reproduce`: rebuild a registered version from its lineage and compare.

Restores the exact dataset by its hash from the DVC remote into a fresh folder, retrains with
the run's recorded config (seed included), evaluates, then compares every weight tensor with the
registered ones and every headline metric with the recorded value. On CPU in deterministic mode
the weights come out identical; on a GPU the report shows how far they moved.

A version trained by several processes (tag `segops.train.world_size`) is retrained by as many
on this machine (torchrun, `train.distributed.nproc_per_node` = the recorded world size, one
node); when this machine cannot run them (NCCL without GPUs, fewer GPUs), reproduce says so.
A run made with `train.threads: auto` or `train.channels_last: auto` is retrained with the
thread count and memory layout it recorded (`segops.env.threads`, `segops.env.channels_last`),
whatever this machine's load or this code's auto rule would pick now.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from segops import tracking
from segops.config import build_config, config_hash
from segops.data.place import dir_md5
from segops.dvc_remote import dvc_text_md5, restore_dataset
from segops.errors import ConfigError, SegopsError
from segops.evaluate.report import evaluate_checkpoint, headline_metrics
from segops.promotion.registry import resolve
from segops.record import CHANNELS_LAST_TAG, TAGS, THREADS_TAG, WORLD_TAGS
from segops.train.checkpoint import load_checkpoint
from segops.train.launch import plan_launch
from segops.train.run import train_configured
from segops.weights import load_state_dict_file


class ReproduceError(SegopsError):
    """The recorded lineage is not enough to rebuild the version."""


@dataclass(frozen=True)
class ReproduceReport:
    model_uri: str
    version_uri: str
    out_dir: str
    data_md5: str
    restored_to: str
    device: str
    config_hash_match: bool  # the retrained checkpoint's config hash equals the recorded one
    dataset_hash_match: bool  # the restored data fingerprints as the recorded data did
    dataset_md5_match: bool | None  # the restored dataset's own DVC hash (None: not recorded)
    weights_identical: bool
    max_weight_diff: float  # largest absolute difference over every weight tensor
    tensors_differing: tuple[str, ...]
    metrics: dict[str, dict[str, float]]  # name -> recorded, reproduced, diff
    world_size: int = 1  # processes that retrained it, as many as the recorded run had

    @property
    def max_metric_diff(self) -> float:
        return max((abs(m["diff"]) for m in self.metrics.values()), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields plus the largest metric difference."""
        data = asdict(self) | {"max_metric_diff": self.max_metric_diff}
        return data | {"tensors_differing": list(self.tensors_differing)}

    def to_markdown(self) -> str:
        """Verdict, the hash checks and a table of recorded vs reproduced metrics."""
        verdict = "identical weights" if self.weights_identical else "weights differ"
        rows = "\n".join(
            f"| {k} | {m['recorded']:.6f} | {m['reproduced']:.6f} | {m['diff']:+.6f} |"
            for k, m in self.metrics.items()
        )
        return (
            f"# Reproduction of {self.version_uri}: {verdict}\n\n"
            f"- data {self.data_md5} restored to `{self.restored_to}`\n- device: {self.device}"
            f", world size {self.world_size} (as recorded)\n"
            f"- config hash matches: {self.config_hash_match}; dataset hash matches: "
            f"{self.dataset_hash_match}; dataset md5 matches: {self.dataset_md5_match}\n"
            f"- max weight difference: {self.max_weight_diff:.3g} "
            f"({len(self.tensors_differing)} tensors differ)\n\n"
            f"| metric | recorded | reproduced | diff |\n|---|---|---|---|\n{rows}\n"
        )

    def write(self) -> tuple[Path, Path]:
        """Write reproduce.json and reproduce.md into `out_dir`; returns their paths."""
        out = Path(self.out_dir)
        (out / "reproduce.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (out / "reproduce.md").write_text(self.to_markdown())
        return out / "reproduce.json", out / "reproduce.md"


def data_subdir(root: str, versioned: str) -> Path:
    """Where the dataset root lies inside the versioned folder (`data/shapes` in `data`)."""
    r, v = Path(root), Path(versioned)
    if r.is_relative_to(v):
        return r.relative_to(v)
    n = len(v.parts)  # one is absolute and the other relative: match the versioned tail
    for i in range(len(r.parts) - n, -1, -1):
        if r.parts[i : i + n] == v.parts:
            return Path(*r.parts[i + n :])
    raise ReproduceError(f"data.root {root} is not inside versioning.path {versioned}")


def _recorded(run_id: str, scratch: Path) -> tuple[str, dict[str, Any]]:
    """The run's `.dvc` text and resolved config, from its artifacts."""

    dvc = tracking.download_artifact(run_id, "lineage/data.dvc", scratch)
    config = tracking.download_artifact(run_id, "config.yaml", scratch)
    if dvc is None or config is None:
        raise ReproduceError(
            f"run {run_id} lacks lineage/data.dvc or config.yaml: run `segops audit` to see "
            "which link is broken"
        )
    return dvc.read_text(), yaml.safe_load(config.read_text())


def _rebuild_config(raw: dict[str, Any], data_root: Path, out: Path):
    """The recorded config with only its locations moved into `out`."""

    raw = json.loads(json.dumps(raw))  # a deep copy
    raw["data"]["root"] = str(data_root)
    raw["train"]["out_dir"] = str(out / "train")
    raw["validation"]["report_dir"] = str(out / "validation")
    return build_config(raw, "recorded config")


def _same_runtime(cfg, tags: dict[str, str]):
    """`cfg` with the runtime choices `auto` made for the run taken from its env tags: the
    thread count (`train.threads`; another count sums in another order) and the memory layout
    (`train.channels_last`; a version trained before auto chose channels-last on CPU trained
    contiguous). Either would move the weights by rounding. The config hash is taken from the
    recorded config before this, so it still matches."""
    train = {}
    threads = tags.get(THREADS_TAG, "")
    if cfg.train.threads == "auto" and threads.isdigit() and int(threads) >= 1:
        train["threads"] = int(threads)
    layout = tags.get(CHANNELS_LAST_TAG, "")
    if cfg.train.channels_last == "auto" and layout in ("True", "False"):
        train["channels_last"] = layout == "True"
    if not train:
        return cfg
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=train)})


def _same_world(cfg, world: int, uri: str):
    """`cfg` retrained by `world` processes on this machine (one node; `nproc_per_node: auto`
    too is pinned to the recorded count, whatever this machine's GPUs would make of it);
    ReproduceError naming the world size when this machine cannot run them."""

    dist = cfg.train.distributed
    if world > 1 or dist.nproc_per_node == "auto":
        dist = dist.model_copy(
            update={"nproc_per_node": world, "nnodes": 1, "node_rank": 0, "rdzv_endpoint": None}
        )
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"distributed": dist})})
    try:
        plan_launch(cfg)
    except ConfigError as exc:
        raise ReproduceError(
            f"{uri} was trained by {world} processes (segops.train.world_size={world}); this "
            f"machine cannot run as many, so it cannot be reproduced here ({exc}). Run `segops "
            f"reproduce` on a machine that can: for a CUDA/NCCL run, one with at least {world} "
            "visible GPUs (a CPU rerun would not give the same weights anyway)"
        ) from None
    return cfg


def retrain_config(
    raw: dict[str, Any], data_root: Path, out: Path, tags: dict[str, str], uri: str
) -> tuple[Any, str]:
    """(the config that retrains the run, the config hash its recorded config has). The hash is
    taken before the recorded world and runtime choices are pinned: a run recorded with
    `nproc_per_node: auto` hashes as `auto` (README), and reproduce retrains it with the world
    size of its tag `segops.train.world_size`."""

    cfg = _rebuild_config(raw, data_root, out)
    recorded_hash = config_hash(cfg)
    world = int(tags.get(WORLD_TAGS["world_size"], "1"))
    return _same_runtime(_same_world(cfg, world, uri), tags), recorded_hash


def compare_weights(a: dict, b: dict) -> tuple[bool, float, tuple[str, ...]]:
    """(identical, max absolute difference, names of differing tensors) of two state dicts."""

    if a.keys() != b.keys():
        missing = sorted(set(a) ^ set(b))
        return False, float("inf"), tuple(missing)
    differing, largest = [], 0.0
    for name, tensor in a.items():
        other = b[name].to(tensor.device)
        if not torch.equal(tensor, other):
            differing.append(name)
            diff = (tensor.double() - other.double()).abs().max().item() if tensor.numel() else 0
            largest = max(largest, float(diff))
    return not differing, largest, tuple(differing)


def _metric_diffs(recorded: dict[str, float], reproduced: dict[str, float]) -> dict:
    return {
        k: {"recorded": recorded[k], "reproduced": v, "diff": v - recorded[k]}
        for k, v in reproduced.items()
        if k in recorded
    }


def reproduce(model_uri: str, out_dir: str | Path, callbacks: Sequence = ()) -> ReproduceReport:
    """Rebuild `model_uri` in `out_dir` (absent or empty) and compare; writes the report."""

    out = Path(out_dir).resolve()
    if out.exists() and any(out.iterdir()):
        raise ReproduceError(f"{out} is not empty: give reproduce a new folder")
    ref = resolve(model_uri)
    run = tracking.find_run_or_none(ref.run_id)
    if run is None:
        raise ReproduceError(f"{ref.uri}: its run {ref.run_id} is gone from the tracking store")
    tags = run["tags"]
    dvc_text, raw = _recorded(ref.run_id, out / "recorded")
    subdir = data_subdir(raw["data"]["root"], raw["versioning"]["path"])
    data_dir = out / "workspace" / tags.get(TAGS["data_path"], "data")
    restore_dataset(dvc_text, tags[TAGS["remote_url"]], data_dir)
    own = tags.get(TAGS["dataset_md5"])
    own_match = None if own is None else dir_md5(data_dir / subdir) == own
    cfg, recorded_hash = retrain_config(raw, data_dir / subdir, out, tags, ref.uri)
    result = train_configured(cfg, resume=False, callbacks=list(callbacks))
    report = evaluate_checkpoint(cfg, result.best_checkpoint, out_dir=out / "eval")
    model_dir = tracking.download_model(ref.uri, out / "registered")
    registered = load_state_dict_file(next(model_dir.rglob("weights.pt")))
    same, largest, differing = compare_weights(
        registered, load_checkpoint(result.best_checkpoint)["model"]
    )
    reproduced = headline_metrics(json.loads(Path(report.metrics_json).read_text()))
    found = ReproduceReport(
        model_uri=model_uri,
        version_uri=ref.uri,
        out_dir=str(out),
        data_md5=dvc_text_md5(dvc_text),
        restored_to=str(data_dir),
        device=_device_name(),
        config_hash_match=recorded_hash == tags.get("segops.config_hash"),
        dataset_hash_match=result.dataset_hash == tags.get("segops.dataset_hash"),
        dataset_md5_match=own_match,
        weights_identical=same,
        max_weight_diff=largest,
        tensors_differing=differing,
        metrics=_metric_diffs(run["metrics"], reproduced),
        world_size=int(tags.get(WORLD_TAGS["world_size"], "1")),
    )
    found.write()
    return found


def _device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
