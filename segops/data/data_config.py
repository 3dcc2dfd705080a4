"""The `data` section of the config: where the dataset is, its format and the format's options.

`format` is a name in `segops.data.registry`; `options` is validated by that format's options
model. The old flat keys `ct_window`, `nifti_skip_empty` and `coco_image_dir` are still read
and still dumped (`segops.data.format_options`), so recorded configs keep their `config_hash`.
Re-exported by `segops.config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializationInfo,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from segops.data.format_options import (
    LEGACY_OPTION_KEYS,
    dump_options,
    legacy_value,
    split_legacy_keys,
    validate_options,
)
from segops.data.registry import FormatOptions, format_info


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Path = Path("data/shapes")
    format: str = Field("folder", description="dataset layout: segops.data.registry's formats")
    image_size: int = Field(64, ge=8, description="side of the square images the model sees")
    crop_size: int | None = Field(
        None,
        ge=16,
        description="native resolution: train on random crops of this side (padded when an "
        "image is smaller) and predict with a sliding window of this side; None = resize "
        "whole images to image_size",
    )
    scale: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="with data.crop_size: resize every image by this factor first, the same "
        "way in training, evaluation, predict, the served model and the report (predictions "
        "are brought back to the original size, where metrics are counted); None = native. "
        "At most 1: upscaling would make a request cost more than serving's pixel budget",
    )
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    split_seed: int = 0
    cache: bool = Field(True, description="keep decoded images in memory (small datasets)")
    num_workers: int = Field(0, ge=0)
    options: SerializeAsAny[FormatOptions] = Field(
        default_factory=FormatOptions,
        validate_default=True,  # the default becomes data.format's own options model
        description="data.format's options (its options model)",
    )
    # Legacy flat keys (segops.data.format_options) of another format than `format`, not at
    # their default: kept so that a recorded config dumps and hashes as before.
    _other_options: dict[str, FormatOptions] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _legacy_flat_options(cls, raw: Any, handler: Any) -> DataConfig:
        """Old flat keys (ct_window, nifti_skip_empty, coco_image_dir) into data.options."""
        if not isinstance(raw, dict) or not LEGACY_OPTION_KEYS.keys() & raw.keys():
            return handler(raw)
        fmt = raw.get("format", cls.model_fields["format"].default)
        raw, other = split_legacy_keys(raw, fmt)
        cfg = handler(raw)
        cfg._other_options = other
        return cfg

    @model_validator(mode="after")
    def _scale_needs_crops(self) -> DataConfig:
        if self.scale is not None and self.crop_size is None:
            raise ValueError(
                "data.scale resizes images before native-resolution crops: set data.crop_size "
                "too (without it whole images are resized to data.image_size anyway)"
            )
        return self

    @field_validator("format")
    @classmethod
    def _registered(cls, name: str) -> str:
        format_info(name)  # ValueError naming the registered formats
        return name

    @field_validator("options", mode="before")
    @classmethod
    def _format_options(cls, value: Any, info: ValidationInfo) -> FormatOptions:
        if "format" not in info.data:  # data.format is invalid: that is the error reported
            return FormatOptions()
        try:
            return validate_options(info.data["format"], value)
        except ValueError as exc:  # without pydantic's "Value error, " prefix
            problem = {"problem": str(exc)}
            raise PydanticCustomError("format_options", "{problem}", problem) from None

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: Any, info: SerializationInfo) -> dict[str, Any]:
        """crop_size, scale and options at their defaults are not dumped, and options with a legacy
        key are dumped under it: configs keep their dump and `config_hash`."""
        data = handler(self)
        data.pop("options", None)
        if self.crop_size is None:
            data.pop("crop_size", None)
        if self.scale is None:
            data.pop("scale", None)
        flat, rest = dump_options(self.format, self.options, self._other_options, info.mode)
        data.update(flat)
        return {**data, "options": rest} if rest else data

    def _legacy(self, key: str) -> Any:
        return legacy_value(self.format, self.options, self._other_options, key)

    @property
    def ct_window(self) -> tuple[float, float] | None:
        """Deprecated: data.options.ct_window of format nifti."""
        return self._legacy("ct_window")

    @property
    def nifti_skip_empty(self) -> bool:
        """Deprecated: data.options.skip_empty of format nifti."""
        return self._legacy("nifti_skip_empty")

    @property
    def coco_image_dir(self) -> str:
        """Deprecated: data.options.image_dir of format coco."""
        return self._legacy("coco_image_dir")
