"""The examples in params.yaml's comments are ones a user can copy: the model options example
uses each model's current option names and builds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from segops.models.registry import check_options, model_info

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def options_example() -> tuple[dict[str, int], list[str]]:
    """`model.options`' comment example `e.g. {key: value, ...} for a/b`: options and models."""
    line = next(s for s in PARAMS.read_text().splitlines() if s.strip().startswith("options:"))
    found = re.search(r"e\.g\. \{([^}]*)\} for ([\w/]+)", line)
    assert found, f"no `e.g. {{...}} for MODEL` example on: {line}"
    pairs = (item.split(":") for item in found.group(1).split(","))
    return {k.strip(): int(v) for k, v in pairs}, found.group(2).split("/")


def current_options(name: str) -> set[str]:
    """The option names a model's summary gives first: `(options: width, levels; depth = ...)`
    -> {width, levels} (an older spelling follows `;` or `=`)."""
    listed = re.search(r"\(options: ([^)]*)\)", model_info(name).summary).group(1)
    return {o.split("=")[0].strip() for o in listed.split(";")[0].split(",")}


@pytest.mark.parametrize("model", options_example()[1])
def test_the_options_example_uses_the_current_names_and_builds(model):
    example, _ = options_example()
    assert set(example) <= current_options(model), (example, model_info(model).summary)
    check_options(model, example)  # raises ConfigError if the model refuses them
