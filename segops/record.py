"""The lineage record: what a model was made from, as one typed value with one spelling of its
MLflow tags. The flow writes it on the run (and registration copies it to the version); audit,
reproduce, history, the CLI and the report read it back with `from_tags`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from segops.errors import SegopsError

PREFIX = "segops."


class LineageError(SegopsError):
    """A run or version lacks a lineage tag that the reader needs."""


@dataclass(frozen=True)
class LineageRecord:
    dataset_path: str  # the dataset trained on, relative to the workspace (data/shapes)
    dataset_md5: str  # its own DVC directory hash
    data_path: str  # the DVC-tracked folder holding it (data)
    data_md5: str  # that folder's version: restores the dataset
    dvc_file: str  # data.dvc
    remote_url: str  # the DVC remote the version was pushed to
    classes: tuple[str, ...]
    model_kind: str  # semantic | instance
    git_commit: str
    git_dirty: bool  # read when the flow started; the .dvc file it rewrites does not count
    validation_passed: bool
    flow_run_id: str  # "none" outside Prefect
    code_version: str  # sha256 of the segops/ and flows/ sources
    # Channels of the images the model was trained on (segops.data.io.IMAGE_CHANNELS: readers
    # turn grayscale into RGB). None: not recorded (versions made before the tag existed); a
    # None field writes no tag, so such a version's tags round-trip unchanged.
    channels: int | None = None

    def to_tags(self) -> dict[str, str]:
        """The MLflow tags of this record (strings; lists as JSON, booleans lower-case)."""
        out = {}
        for name, value in asdict(self).items():
            if value is None and name in OPTIONAL:
                continue
            if isinstance(value, bool):
                value = str(value).lower()
            elif isinstance(value, (list, tuple)):
                value = json.dumps(list(value))
            out[TAGS[name]] = str(value)
        return out

    @classmethod
    def from_tags(cls, tags: dict[str, str], where: str = "the run") -> LineageRecord:
        """The record in `tags`; LineageError naming every missing tag."""
        missing = [tag for name, tag in TAGS.items() if tag not in tags and name not in OPTIONAL]
        values = {name: tags.get(tag) for name, tag in TAGS.items()}
        if missing:
            raise LineageError(
                f"{where} lacks the lineage tag(s) {', '.join(missing)}: it was made before they "
                "existed, or not by segops's flow; retrain it with `segops run` to record them"
            )
        return cls(
            **values
            | {
                "classes": tuple(json.loads(values["classes"])),
                "git_dirty": values["git_dirty"] == "true",
                "validation_passed": values["validation_passed"] == "true",
                "channels": None if values["channels"] is None else int(values["channels"]),
            }
        )


TAGS = {
    "dataset_path": "segops.dataset.path",
    "dataset_md5": "segops.dataset.md5",
    "data_path": "segops.data.path",
    "data_md5": "segops.data.md5",
    "dvc_file": "segops.data.dvc_file",
    "remote_url": "segops.data.remote_url",
    "classes": "segops.data.classes",
    "model_kind": "segops.model.kind",
    "git_commit": "segops.git.commit",
    "git_dirty": "segops.git.dirty",
    "validation_passed": "segops.validation.passed",
    "flow_run_id": "segops.prefect.flow_run_id",
    "code_version": "segops.code.version",
    "channels": "segops.data.channels",
}
OPTIONAL = {"channels"}  # fields whose tag older versions lack: None when absent


# How the run was spread over processes (segops.train.launch): written by the train step on
# every run, so reproduce can rerun with the same world size. Runs made before have none (1).
WORLD_TAGS = {
    "world_size": "segops.train.world_size",
    "backend": "segops.train.backend",  # gloo, nccl, or none for one plain process
    "per_rank_batch": "segops.train.per_rank_batch",
    "global_batch": "segops.train.global_batch",  # per-rank batch x world size
}


# The torch thread count the run trained with (written by tracking's MlflowMetrics on train
# start). Float sums depend on it: reproduce trains with the recorded count, so `train.threads:
# auto` cannot pick another one on a busier or idler machine.
THREADS_TAG = "segops.env.threads"
CHANNELS_LAST_TAG = "segops.env.channels_last"  # likewise the memory layout it trained in


def world_tags(world_size: int, backend: str, per_rank_batch: int) -> dict[str, str]:
    """The `WORLD_TAGS` of a run of `world_size` processes of `per_rank_batch` images each."""
    values = (world_size, backend, per_rank_batch, per_rank_batch * world_size)
    return {tag: str(value) for tag, value in zip(WORLD_TAGS.values(), values, strict=True)}
