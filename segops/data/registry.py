"""A registry of dataset formats: a dict, a decorator, and errors that list the valid names.

A format is one module and one decorator on its layout reader:

    @register_format("coco", options=CocoOptions, read_sample=read_sample,
                     instances=instance_targets, needs="pycocotools")
    def read_layout(root: Path, options: CocoOptions) -> Layout: ...

- `read_layout(root, options) -> Layout` lists the samples (no pixels decoded);
- `read_sample(root, ref) -> (image Part, mask Part)` reads the pixels of samples whose
  `ref.reader` is the format's name; None: refs are plain PNG pairs (`reader="png"`);
- `instances(root, ref) -> {"boxes", "labels", "masks"}` gives instance targets; None: the
  format has semantic masks only;
- `options` is the pydantic model of `data.options` for this format (frozen, extra keys
  forbidden); `needs` the package its readers import, checked before they run.

A format registers when its module is imported; segops' own formats are listed in
`_FORMAT_MODULES` and imported when a format is first looked up (as the model zoo does), so
importing the CLI or the config stays cheap; nibabel and pycocotools load on first read.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

_FORMAT_MODULES = (
    "segops.data.formats",
    "segops.data.cityscapes",
    "segops.data.nifti",
    "segops.data.coco",
    "segops.data.folder_instance",
)


class FormatOptions(BaseModel):
    """`data.options` of a format; the options of formats that take none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class FormatEntry:
    name: str
    read_layout: Callable  # (root: Path, options) -> Layout
    options: type[FormatOptions]
    read_sample: Callable | None  # (root, ref) -> (Part, Part); None: PNG pairs
    instance_targets: Callable | None  # (root, ref) -> dict of numpy targets
    needs: str  # package the readers import ("" = none beyond segops' own)
    summary: str

    @property
    def instances(self) -> bool:
        """Whether the format has instance annotations (Mask R-CNN can train on it)."""
        return self.instance_targets is not None

    def require(self) -> None:
        """ValueError naming the package to install when `needs` is missing."""
        if self.needs and importlib.util.find_spec(self.needs) is None:
            raise ValueError(f"format {self.name!r} needs {self.needs}: pip install it")


_REGISTRY: dict[str, FormatEntry] = {}


def register_format(
    name: str,
    *,
    options: type[FormatOptions] = FormatOptions,
    read_sample: Callable | None = None,
    instances: Callable | None = None,
    needs: str = "",
    summary: str = "",
) -> Callable:
    """Decorator that registers a layout reader as format `name` (see the module docstring)."""
    if not (isinstance(options, type) and issubclass(options, FormatOptions)):
        raise TypeError(f"format {name!r}: options must subclass FormatOptions")

    def wrap(read_layout: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"format {name!r} registered twice")
        doc = (read_layout.__doc__ or "").strip().splitlines()
        entry = FormatEntry(
            name,
            read_layout,
            options,
            read_sample,
            instances,
            needs,
            summary or (doc[0] if doc else ""),
        )
        _REGISTRY[name] = entry
        return read_layout

    return wrap


def _load_formats() -> None:
    for module in _FORMAT_MODULES:
        importlib.import_module(module)


def list_formats(instances: bool | None = None) -> list[FormatEntry]:
    """The registered formats sorted by name; `instances`: only those with (True) or without
    (False) instance annotations, None: all."""
    _load_formats()
    entries = [_REGISTRY[k] for k in sorted(_REGISTRY)]
    return [e for e in entries if instances is None or e.instances == instances]


def format_names(instances: bool | None = None) -> list[str]:
    """Names of `list_formats(instances)`."""
    return [entry.name for entry in list_formats(instances)]


def format_info(name: str) -> FormatEntry:
    """The entry for `name`; ValueError naming the valid names otherwise."""
    _load_formats()
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset format {name!r}; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]
