"""Request rows to images, inside the pixel budget, checked before anything is decoded.

Every row gives exactly one of `image` (base64 text of a PNG, JPEG or TIFF) and `array` (a
nested list of integers 0..255). Sizes are read first, from the image header (PIL's lazy
`Image.open` reads only the header) or from the list's lengths, and refused against the
budget before pixels are decoded or converted: an image may have at most
`SEGOPS_SERVE_MAX_PIXELS` pixels, and so may the area a semantic model's sliding window
actually covers (an image thinner than one window is padded to it: 1x1,000,000 pixels cost
as much as window x 1,000,000).

Bad rows raise `MlflowException` with `INVALID_PARAMETER_VALUE` naming the row: the scoring
server answers 400 with the message.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from PIL import Image

from segops.data import io as image_io  # image_io.image_from_bytes: tests replace it

MAX_PIXELS_ENV = "SEGOPS_SERVE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 4096 * 4096
FIELDS = ("image", "array")
EXPECTED = (
    "'image' (base64 text of a PNG, JPEG or TIFF) or 'array' (nested list of integers 0..255)"
)
FORMATS = ["PNG", "JPEG", "TIFF"]
# How a JSON null in a string column can arrive after MLflow's parsing: never valid base64 of
# an image, so they mean "no image".
NULL_TEXTS = frozenset({"None", "nan", "NaN", "null", "<NA>"})
BYTES_PER_PIXEL = 16  # the most an encoded pixel can take (4 channels x 32 bits, uncompressed)


def bad_input(row: int, problem: str) -> MlflowException:
    """The exception for one bad row (INVALID_PARAMETER_VALUE: the server answers 400)."""
    return MlflowException.invalid_parameter_value(f"row {row}: {problem}")


@dataclass(frozen=True)
class PixelBudget:
    """At most `max_pixels` pixels per image, and per area the model covers: a semantic model
    predicts an image with a side over `slide_above * window` tile by tile, each side padded
    up to one `window` (`slide_above` 0: every image; `window` None: no sliding window, e.g.
    instance models resize internally)."""

    max_pixels: int
    window: int | None = None
    slide_above: float = 1.5

    def covered(self, height: int, width: int) -> int:
        """Pixels the model works on for an image of this size."""
        win = self.window
        if win is None or max(height, width) <= self.slide_above * win:
            return height * width
        return max(height, win) * max(width, win)

    def check(self, row: int, height: int, width: int) -> None:
        """`bad_input` unless an image of this size fits the budget."""
        if height < 1 or width < 1:
            raise bad_input(row, f"image is empty ({height}x{width})")
        limit = f"the limit {self.max_pixels} ({MAX_PIXELS_ENV})"
        if height * width > self.max_pixels:
            raise bad_input(
                row, f"image is {width}x{height} = {height * width} pixels, more than {limit}"
            )
        covered = self.covered(height, width)
        if covered > self.max_pixels:
            raise bad_input(
                row,
                f"image is {width}x{height}: predicting it covers {covered} pixels (each side "
                f"padded to the model's {self.window}-pixel window), more than {limit}; send a "
                f"less elongated image",
            )


def _present(value: Any) -> bool:
    # Rows of `dataframe_records` that lack a column arrive as None, NaN or pd.NA.
    if isinstance(value, list | tuple | np.ndarray):
        return True
    return not pd.isna(value) and not (isinstance(value, str) and value in NULL_TEXTS)


NOT_IMAGE = "'image' is not a base64-encoded PNG/JPEG/TIFF"


def image_bytes(row: int, text: Any, budget: PixelBudget) -> bytes:
    """The encoded image in base64 `text`, once its header says it fits `budget`; raises
    `bad_input`. No pixel is decoded."""
    if not isinstance(text, str):
        raise bad_input(row, f"'image' must be base64 text, got {type(text).__name__}")
    most = (budget.max_pixels * BYTES_PER_PIXEL + (1 << 20)) * 4 // 3
    if len(text) > most:
        raise bad_input(
            row,
            f"'image' is {len(text)} characters of base64, more than an image within the limit "
            f"{budget.max_pixels} pixels ({MAX_PIXELS_ENV}) can take",
        )
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_input(row, "'image' is not valid base64") from None
    try:  # the header only: a huge image is refused before its pixels are decoded
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            width, height = img.size
    except Image.DecompressionBombError:
        raise bad_input(
            row,
            f"image header claims far more pixels than the limit {budget.max_pixels} "
            f"({MAX_PIXELS_ENV}); refused before decoding",
        ) from None
    except Image.UnidentifiedImageError:
        raise bad_input(row, f"{NOT_IMAGE}: not a readable image (unknown format)") from None
    except Exception as exc:  # a broken header: PIL raises several types
        raise bad_input(row, f"{NOT_IMAGE}: its header cannot be read ({exc})") from None
    budget.check(row, height, width)
    return data


def image_from_base64(row: int, text: Any, budget: PixelBudget) -> np.ndarray:
    """HxWx3 uint8 from base64 image text; raises `bad_input` for anything else. The size in
    the header is checked against `budget` before any pixel is decoded."""
    data = image_bytes(row, text, budget)
    try:
        return image_io.image_from_bytes(data)
    except image_io.ReadError as exc:
        raise bad_input(row, f"{NOT_IMAGE}: {exc}") from None


def nested_shape(row: int, value: Any) -> tuple[int, ...]:
    """The shape of a nested list read from its first elements, without converting it."""
    shape: list[int] = []
    item = value
    while len(shape) <= 3:
        if isinstance(item, np.ndarray) and item.dtype != object:
            shape.extend(item.shape)
            break
        if not isinstance(item, list | tuple | np.ndarray):
            break
        shape.append(len(item))
        if not len(item):
            break
        item = item[0]
    if len(shape) > 3:
        raise bad_input(row, f"'array' must be HxW or HxWxC numbers, got {len(shape)}+ levels")
    return tuple(shape)


def _as_uint8(row: int, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError:  # numpy 2 refuses ragged nested lists
        raise bad_input(row, "'array' is ragged: rows must all have the same length") from None
    if arr.dtype.kind not in "biuf" or arr.ndim not in (2, 3):
        raise bad_input(
            row, f"'array' must be HxW or HxWxC numbers, got shape {arr.shape} of {arr.dtype}"
        )
    if arr.size and (arr.min() < 0 or arr.max() > 255 or not np.all(arr == np.round(arr))):
        raise bad_input(row, "'array' values must be integers 0..255")
    return arr.astype(np.uint8)


def _check_channels(row: int, channels: int) -> None:
    if channels not in (1, 3, 4):
        raise bad_input(
            row, f"'array' has {channels} channels; give 1 (grayscale), 3 (RGB) or 4 (RGBA)"
        )


def check_array(row: int, value: Any, budget: PixelBudget) -> None:
    """`bad_input` for a nested list whose size (read from its lengths) does not fit `budget`,
    whose rows differ in length or whose channel count is not 1, 3 or 4: nothing converted."""
    shape = nested_shape(row, value)
    if len(shape) >= 2:
        budget.check(row, shape[0], shape[1])
        if isinstance(value, list | tuple) and any(
            not isinstance(r, list | tuple | np.ndarray) or len(r) != shape[1] for r in value
        ):
            raise bad_input(row, "'array' is ragged: rows must all have the same length")
    if len(shape) == 3:
        _check_channels(row, shape[2])


def image_from_array(row: int, value: Any, budget: PixelBudget) -> np.ndarray:
    """HxWx3 uint8 from a nested list (HxW, HxWx1, HxWx3, HxWx4); raises `bad_input`. The
    size is checked against `budget` before the list becomes an array."""
    check_array(row, value, budget)
    arr = _as_uint8(row, value)
    budget.check(row, arr.shape[0], arr.shape[1])
    if arr.ndim == 2:
        arr = arr[..., None]
    _check_channels(row, arr.shape[2])
    # Same conversions as segops.data.io: grayscale repeated to RGB, alpha dropped.
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else np.ascontiguousarray(arr[..., :3])


def _field(row: int, image: Any, array: Any) -> str:
    """Which of `image` and `array` the row gives (a null one counts as absent)."""
    has_image, has_array = _present(image), _present(array)
    if has_image and has_array:
        raise bad_input(row, "give either 'image' or 'array', not both")
    if has_image or has_array:
        return "image" if has_image else "array"
    raise bad_input(
        row,
        f"no input: 'image' and 'array' are both missing or null; give {EXPECTED} "
        f"(other fields are not accepted)",
    )


def check_row(row: int, image: Any, array: Any, budget: PixelBudget) -> None:
    """Every check of `row_image` that decodes no pixel: field, base64, header, size, shape."""
    if _field(row, image, array) == "image":
        image_bytes(row, image, budget)
    else:
        check_array(row, array, budget)


def row_image(row: int, image: Any, array: Any, budget: PixelBudget) -> np.ndarray:
    """The HxWx3 uint8 image of one row, from exactly one of `image` and `array`."""
    if _field(row, image, array) == "image":
        return image_from_base64(row, image, budget)
    return image_from_array(row, array, budget)


def check_fields(model_input: pd.DataFrame) -> None:
    """INVALID_PARAMETER_VALUE for fields other than `image` and `array`, or none of them.

    MLflow's schema drops fields it does not know before the model sees them, so a request
    with only misspelled fields (`{"img": ...}`) arrives as no field and no row at all."""
    unknown = [str(c) for c in model_input.columns if c not in FIELDS]
    if unknown:
        raise MlflowException.invalid_parameter_value(
            f"unknown field(s) {unknown}: each row takes exactly one of {EXPECTED}"
        )
    if not any(field in model_input.columns for field in FIELDS):
        raise MlflowException.invalid_parameter_value(
            f"no 'image' or 'array' field in the request (fields the model does not know, "
            f"e.g. misspelled ones, are dropped): each row takes exactly one of {EXPECTED}"
        )
