"""The `score` flow: check and identify the input -> pin the champion -> score -> record the run.

Every task calls one `segops.scoring.steps` function; they take the frozen `Config` (validated
once, here) and pass small frozen records as they are (`segops.scoring.records`: `Pinned`,
`InputIdentity`, `ScoreSummary`); the flow's return value is built by `score_result`. Deploy
it like `retrain`, e.g. nightly after it, with `model`, `src` and `out` as parameters.

`src` and `out` may be `s3://bucket/prefix` (endpoint and credentials from the environment);
the input's identity is then a hash of its keys, sizes and ETags.

    python -m flows.score SRC OUT [--model NAME] [--engine ray] [--address host:port]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from segops.quiet import quiet_defaults

quiet_defaults()  # before Prefect and MLflow read their settings

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from flows.errors import ONLY_TRANSIENT, quiet_user_errors  # noqa: E402
from segops.config import Config, load_config  # noqa: E402
from segops.scoring import steps  # noqa: E402
from segops.scoring.records import (  # noqa: E402
    InputIdentity,
    Pinned,
    ScoreSummary,
    score_result,
)

quiet_user_errors()  # a SegopsError is logged by Prefect as its message, not a traceback


@task(name="check-input", cache_policy=NO_CACHE)
def check_input(src: str, engine: str, address: str | None) -> InputIdentity:
    return steps.check_step(src, engine, address)


@task(name="pin-model", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, **ONLY_TRANSIENT)
def pin_model(config: Config, model: str | None) -> Pinned:
    return steps.pin_step(config, model)


@task(name="score", cache_policy=NO_CACHE)
def score_input(
    config: Config, pinned: Pinned, src: str, out: str, engine: str, address: str | None
) -> ScoreSummary:
    return steps.score_step(config, pinned, src, out, engine, address)


@task(name="record-run", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, **ONLY_TRANSIENT)
def record_run(
    config: Config, pinned: Pinned, identity: InputIdentity, summary: ScoreSummary, run_id: str
) -> str:
    return steps.record_step(config, pinned, identity, summary, run_id)


@flow(name="score", log_prints=True)
def score(
    src: str,
    out: str,
    model: str | None = None,
    engine: str = "local",
    address: str | None = None,
    params: str | None = "params.yaml",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Score the images of `src` into `out` with `model` (default: `promotion.model_name`'s
    champion, pinned to its version) and record an MLflow run linked to that version.
    Returns the pinned version, the input's identity, the summary and the run id."""
    config = load_config(params, overrides)
    # An unknown engine, a Ray address that does not answer, an empty or missing folder or
    # prefix stop here, first thing: before the pin, with nothing written and no MLflow run.
    identity = check_input(src, engine, address)
    pinned = pin_model(config, model)  # a name with no champion stops here
    if warning := pinned.warning():
        print(f"warning: {warning}")
    summary = score_input(config, pinned, src, out, engine, address)
    run_id = record_run(config, pinned, identity, summary, str(flow_run.id or "none"))
    print(summary.line(pinned.model_uri, src, run_id))
    return score_result(pinned, identity, summary, run_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=score.__doc__)
    parser.add_argument("src")
    parser.add_argument("out")
    parser.add_argument("--model", default=None)
    parser.add_argument("--engine", default="local", choices=["local", "ray"])
    parser.add_argument("--address", default=None)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    result = score(
        args.src, args.out, args.model, args.engine, args.address, args.params, args.overrides
    )
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
