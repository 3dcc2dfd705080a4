"""`data.options`: a format's options validated by its model, and the legacy flat keys.

Before `data.options` existed, three format options were flat keys of `data`
(`LEGACY_OPTION_KEYS`). Recorded configs (checkpoints, MLflow runs, model.json) use them, so
they are still read, and they stay the dumped spelling of those options: a config's dump and
`config_hash` are the same whichever spelling was used. Options at their defaults are never
dumped (a config written before an option existed keeps its hash).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from segops.data.registry import FormatOptions, format_info

# Legacy flat key of `data` -> (format, option of that format's options model).
LEGACY_OPTION_KEYS = {
    "ct_window": ("nifti", "ct_window"),
    "nifti_skip_empty": ("nifti", "skip_empty"),
    "coco_image_dir": ("coco", "image_dir"),
}


def options_problem(fmt: str, exc: ValidationError) -> str:
    """One clause per error of format `fmt`'s options model: which key, what is wrong."""
    names = list(format_info(fmt).options.model_fields)
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"format {fmt!r} has no option {key!r}; it takes {names or 'none'}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg}" if key else msg)
    return "; ".join(lines)


def validate_options(fmt: str, value: Any) -> FormatOptions:
    """`value` (a dict, None or another format's options) as format `fmt`'s options model;
    ValueError saying which key is wrong."""
    model = format_info(fmt).options
    if isinstance(value, model):
        return value
    if isinstance(value, BaseModel):  # another format's options (after a model_copy)
        value = value.model_dump()
    try:
        return model.model_validate(value or {})
    except ValidationError as exc:
        raise ValueError(options_problem(fmt, exc)) from None


def _is_default(options: FormatOptions, name: str) -> bool:
    field = type(options).model_fields[name]
    if field.is_required():
        return False
    return bool(getattr(options, name) == field.get_default(call_default_factory=True))


def split_legacy_keys(
    raw: dict[str, Any], fmt: str
) -> tuple[dict[str, Any], dict[str, FormatOptions]]:
    """`raw` (a `data` section) with its legacy keys moved into `options` when they belong to
    format `fmt`, and the validated options of those that belong to another format and are
    not at their default (kept so the config dumps and hashes as before)."""
    options = raw.get("options") or {}
    options = options.model_dump() if isinstance(options, BaseModel) else dict(options)
    out = {k: v for k, v in raw.items() if k not in LEGACY_OPTION_KEYS}
    other: dict[str, FormatOptions] = {}
    for key in [k for k in LEGACY_OPTION_KEYS if k in raw]:
        owner, option = LEGACY_OPTION_KEYS[key]
        if owner == fmt:
            if option in options:
                raise ValueError(f"set data.options.{option} or its old name data.{key}, not both")
            options[option] = raw[key]
            continue
        try:
            model = validate_options(owner, {option: raw[key]})
        except ValueError as exc:
            raise ValueError(f"data.{key} (an option of format {owner!r}): {exc}") from None
        if not _is_default(model, option):
            other[key] = model
    return ({**out, "options": options} if options or "options" in raw else out), other


def dump_options(
    fmt: str, options: FormatOptions, other: dict[str, FormatOptions], mode: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(legacy flat keys, the rest of `data.options`) to dump, defaults left out; `mode` is
    pydantic's dump mode ("python" or "json")."""
    flat = {k: m.model_dump(mode=mode)[LEGACY_OPTION_KEYS[k][1]] for k, m in other.items()}
    legacy = {option: key for key, (owner, option) in LEGACY_OPTION_KEYS.items() if owner == fmt}
    dumped, rest = options.model_dump(mode=mode), {}
    for name in type(options).model_fields:
        if _is_default(options, name):
            continue
        if name in legacy:
            flat[legacy[name]] = dumped[name]
        else:
            rest[name] = dumped[name]
    return {key: flat[key] for key in LEGACY_OPTION_KEYS if key in flat}, rest


def legacy_value(fmt: str, options: FormatOptions, other: dict[str, FormatOptions], key: str):
    """The value legacy key `key` stands for in a config of format `fmt`."""
    owner, option = LEGACY_OPTION_KEYS[key]
    if owner == fmt:
        return getattr(options, option)
    if key in other:
        return getattr(other[key], option)
    return format_info(owner).options.model_fields[option].get_default(call_default_factory=True)
