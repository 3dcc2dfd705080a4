"""The lineage record of a flow's run, from what the steps before training returned
(`segops.record.LineageRecord` spells its tags; docs/architecture.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from segops.lineage import code
from segops.record import LineageRecord
from segops.steps.records import Contract, SourceState, Validated

if TYPE_CHECKING:
    from segops.versioning import DataVersion


def lineage_record(
    data: DataVersion,
    validated: Validated,
    flow_run_id: str,
    git: SourceState,
    contract: Contract,
) -> LineageRecord:
    """What every run and registered version of this flow records: the data version, the
    validation verdict, the source state read when the flow started, the model contract
    (`registry_step`'s), the flow run and the code version."""
    return LineageRecord(
        dataset_path=data.dataset,
        dataset_md5=data.dataset_md5,
        data_path=data.path,
        data_md5=data.md5,
        dvc_file=data.dvc_file,
        remote_url=data.remote_url,
        classes=contract.classes,
        model_kind=contract.kind,
        git_commit=git.commit,
        git_dirty=git.dirty,
        validation_passed=validated.report.success,
        flow_run_id=flow_run_id or "none",
        code_version=code.code_version(),
        channels=contract.channels,
    )
