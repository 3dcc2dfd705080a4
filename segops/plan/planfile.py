"""A plan as a params file (reasons as YAML comments), as markdown, and read back as overrides.

The plan file has params.yaml's sections and keys, only those the planner decided, so
`load_config(plan_file)` validates it; `plan_overrides` turns it into `section.key=value`
overrides that go before the user's `--set` ones (params.yaml < plan < --set).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import yaml

from segops.config import Config, load_config
from segops.errors import ConfigError
from segops.plan.decide import Plan
from segops.plan.fingerprint import Fingerprint


def flow_yaml(value: Any) -> str:
    """`value` as one line of YAML that `yaml.safe_load` reads back to the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def _percent(fp: Fingerprint) -> str:
    pairs = zip(fp.classes, fp.class_fractions, strict=True)
    return ", ".join(f"{name} {share:.2%}" for name, share in pairs)


def _extents(fp: Fingerprint) -> str:
    pairs = zip(fp.classes, fp.class_extents, strict=False)  # none in older fingerprints
    return f"{fp.object_extent:g}" + "".join(f", {n} {e:g}" for n, e in pairs if e > 0)


def fingerprint_lines(fp: Fingerprint) -> list[str]:
    """The fingerprint as short human-readable lines."""
    (h0, h1, h2), (w0, w1, w2) = fp.height, fp.width
    mean, std = (", ".join(f"{v:.4f}" for v in vals) for vals in (fp.mean, fp.std))
    return [
        f"dataset: {fp.root} ({len(fp.classes)} classes)",
        "samples: " + ", ".join(f"{k} {v}" for k, v in fp.samples.items()),
        f"image size (w x h): min {w0}x{h0}, median {w1}x{h1}, max {w2}x{h2}; "
        f"median shorter side {fp.short_side}; {'all one size' if fp.same_size else 'mixed'}",
        f"channels: {fp.channels}",
        f"class shares of the training pixels: {_percent(fp)}",
        f"typical object extent (px, pixel-weighted median run of a class): {_extents(fp)}",
        f"intensity ({fp.intensity_images} training images, [0, 1]): mean {mean}; std {std}",
    ]


def _machine_line(plan: Plan) -> str:
    step = "probe skipped" if plan.step_seconds is None else f"{plan.step_seconds:.3f} s/step"
    return f"planned for: {plan.device}, budget {plan.budget_minutes:g} min, {step}"


def render_plan(plan: Plan) -> str:
    """The plan file: a header with the fingerprint, then each decided key under its section
    with its reason as a comment above it (sections in params.yaml's order)."""
    header = [
        "segops plan: a params file; `segops run --plan FILE` layers it between",
        "params.yaml and --set. Edit freely: it is only a starting point.",
    ]
    lines = [f"# {text}" for text in [*header, *fingerprint_lines(plan.fingerprint)]]
    lines.append(f"# {_machine_line(plan)}")
    values = plan.values()
    reasons = {d.key: d.reason for d in plan.decisions}
    for section in Config.model_fields:
        if section not in values:
            continue
        lines += ["", f"{section}:"]
        for key, value in values[section].items():
            for part in textwrap.wrap(reasons[f"{section}.{key}"], 94):
                lines.append(f"  # {part}")
            lines.append(f"  {key}: {flow_yaml(value)}")
    return "\n".join(lines) + "\n"


def plan_markdown(plan: Plan) -> str:
    """Fingerprint and decisions, with reasons, as markdown (printed by `segops plan`)."""
    fp_lines = "\n".join(f"- {line}" for line in fingerprint_lines(plan.fingerprint))
    rows = "\n".join(f"| `{d.key}` | `{flow_yaml(d.value)}` | {d.reason} |" for d in plan.decisions)
    probed = plan.step_seconds is not None
    skipped = "" if probed else "\n\n`train.epochs` not planned: probe skipped."
    return (
        f"## Dataset fingerprint\n\n{fp_lines}\n- {_machine_line(plan)}\n\n"
        f"## Decisions\n\n| key | value | reason |\n|---|---|---|\n{rows}{skipped}\n"
    )


def write_plan(plan: Plan, path: str | Path) -> Path:
    """Write the plan file and check that it loads as a config; returns the path."""
    path = Path(path)
    path.write_text(render_plan(plan))
    load_config(path)
    return path


def read_plan(path: str | Path) -> dict[str, dict[str, Any]]:
    """The plan file's {section: {key: value}}, validated as a params file (errors name it)."""
    load_config(path)  # unknown keys and wrong types fail here, naming the plan file
    raw = yaml.safe_load(Path(path).read_text()) or {}
    for section, keys in raw.items():
        if not isinstance(keys, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping of keys")
    return raw


def plan_overrides(path: str | Path) -> list[str]:
    """The plan file as `section.key=value` overrides (whole values: model.options too)."""
    raw = read_plan(path)
    return [f"{s}.{k}={flow_yaml(v)}" for s, keys in raw.items() for k, v in keys.items()]
