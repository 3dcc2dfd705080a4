"""The model part of a config checked before a flow starts, without torch where it can be.

A known `model.name` with default options and no weights file is checked against the static
table in `segops.models.catalog`; anything else (options, a weights file, a name only a plugin
registers) goes through `segops.train.run.check_model_config`, which builds the model on the
`meta` device (it imports torch and the builders: seconds, once).
"""

from __future__ import annotations

from segops.config import Config
from segops.data.registry import format_info, format_names
from segops.errors import ConfigError
from segops.models.catalog import MODEL_KINDS

# lazy imports: segops.train.run (torch) is imported only for configs the catalog cannot check:
# the point of this module is to check the rest without torch (docs/development.md "Imports").


def check_model_fast(cfg: Config) -> str:
    """ConfigError for a model config that cannot train (see module docstring); its kind."""
    name, kind = cfg.model.name, MODEL_KINDS.get(cfg.model.name)
    if kind is None or cfg.model.options or cfg.model.pretrained not in (None, "torchvision"):
        from segops.train.run import check_model_config, model_kind

        check_model_config(cfg)
        return model_kind(cfg)

    if kind == "instance" and not format_info(cfg.data.format).instances:
        raise ConfigError(
            f"model.name {name!r} is an instance model and needs instance annotations,"
            f" but data.format is {cfg.data.format!r}: use one of {format_names(instances=True)}"
        )
    return kind
