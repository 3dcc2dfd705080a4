"""`segops promote`: put a registered version through the gate, or roll the champion back,
under the same lock as the flows. Imports stay inside the command (`segops --help` is fast)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

from segops.cli.common import ParamsOpt, SetOpt, config, echo

# lazy imports: MLflow (segops.tracking, segops.promotion) and the registration step load when
# `segops promote` runs, not with `segops --help` (tests/test_architecture.py measures it).


def promote(
    model: Annotated[
        str | None, typer.Argument(help="models:/NAME/VERSION to put through the gate")
    ] = None,
    rollback: Annotated[bool, typer.Option(help="move champion back to the previous one")] = False,
    reason: Annotated[str, typer.Option(help="why (recorded with a rollback)")] = "manual rollback",
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Put a registered version through the promotion gate, or roll the champion back."""
    from segops import tracking
    from segops.promotion import registry

    cfg = config(params, overrides)
    tracking.connect(cfg.tracking)
    name = cfg.promotion.model_name
    # The gate's lock: the one every host shares with a Prefect server, else a file. Through
    # flows/, which imports Prefect only then (segops never imports it).
    lock = importlib.import_module("flows.promotion_lock").promotion_lock_for(
        name, registry.promotion_lock_dir(cfg), lambda: echo("waiting for a promotion in progress")
    )
    if rollback:
        with lock:  # a rollback waits for an in-flight promotion
            ref = registry.rollback(name, reason)
        echo(f"champion of {name} is now version {ref.version} ({reason})")
        return
    if model is None:
        raise typer.BadParameter("give a models:/NAME/VERSION, or --rollback")
    from segops.steps.registration import promote_step

    ref = registry.resolve(model)
    with lock:
        decision = promote_step(cfg, ref, file_lock=False)
    verdict = "promoted to champion" if decision.promote else "not promoted"
    echo(f"{ref.uri}: {verdict}\n" + "\n".join(f"- {r}" for r in decision.reasons))
