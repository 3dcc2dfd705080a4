"""NIfTI volumes (nibabel) read as 2D slices.

    images/<case>.nii.gz (or .nii)   3-D intensity volume
    labels/<case>.nii.gz (or .nii)   3-D label volume on the same voxel grid
    classes.txt                      one class name per line (line 1 = id 0)
    splits/{train,val,test}.txt      optional; they list CASE ids, not slice ids

Every slice along the last array axis is a sample with id `<case>_<k:03d>`; array axes 0 and 1
become rows and columns, as stored (no reorientation: image and label share the voxel grid).
Intensities become 8-bit grey replicated to RGB: with `data.options.ct_window = (level, width)` the
values level - width/2 .. level + width/2 map linearly onto 0..255 (clipped, rounded half up),
without it each volume's own min..max does. Labels must hold integers 0..254 (255 = ignore).
Samples are split by case (the manifest's `group`), never slice by slice, so no patient is in
two splits. `data.options.skip_empty` leaves out slices whose label is all 0 (`NiftiOptions`;
the old flat keys `data.ct_window`, `data.nifti_skip_empty` still work). The manifest's
sha256 columns hash each slice's voxel values (after scl_slope/inter) as C-order bytes.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from segops.data.decode_cache import signature
from segops.data.formats import SPLITS, Layout, SampleRef, _assign_splits, read_classes
from segops.data.io import Part, ReadError, array_sha256, read_derived
from segops.data.registry import FormatOptions, register_format

# lazy imports: nibabel (~0.1 s) is imported on first read: every format module loads when any
# format is looked up, and the registry names a missing package (`needs`)
# (docs/development.md "Imports").

SUFFIXES = (".nii.gz", ".nii")


class NiftiOptions(FormatOptions):
    ct_window: tuple[float, float] | None = Field(
        None, description="CT (level, width) to 8 bits, e.g. (40, 400); None = min..max"
    )
    skip_empty: bool = Field(False, description="leave out slices with no label")

    @model_validator(mode="after")
    def _window_positive(self) -> NiftiOptions:
        if self.ct_window is not None and self.ct_window[1] <= 0:
            raise ValueError("ct_window is (level, width); the width must be positive")
        return self


def case_id(name: str) -> str | None:
    """The case id of a volume's file name, or None if it is not a NIfTI file."""
    for suffix in SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name.removesuffix(suffix)
    return None


@functools.lru_cache(maxsize=4)
def _load(path: str, stamp: tuple[int, ...]) -> tuple[np.ndarray, float, float]:
    """(voxels, min, max) of the volume at `path`; `stamp` (the file's signature: device,
    inode, size, mtime, ctime) keys the cache, so a file replaced by one of the same size and
    mtime (`cp -p`, `rsync -a`, `tar x`) is read again: its ctime changed."""
    import nibabel as nib  # on first read: importing it takes a while

    try:
        volume = np.asanyarray(nib.load(path).dataobj)
    except Exception as exc:  # nibabel, gzip and zlib raise many kinds for a corrupt file
        raise ReadError(f"not a readable NIfTI volume ({type(exc).__name__}: {exc})") from None
    if volume.size == 0:
        raise ReadError("is an empty volume")
    return volume, float(np.nanmin(volume)), float(np.nanmax(volume))


def read_volume(path: Path) -> tuple[np.ndarray, float, float]:
    """(voxels, min, max) of a NIfTI file, cached while the file is unchanged; raises
    ReadError (also when the file does not exist)."""
    try:
        stamp = signature(path)
    except FileNotFoundError:
        raise ReadError("file does not exist") from None
    return _load(str(path), stamp)


def volume_slice(volume: np.ndarray, index: int) -> np.ndarray:
    """Slice `index` along the last axis of a 3-D volume; raises ReadError."""
    if volume.ndim != 3:
        raise ReadError(f"is {volume.ndim}-D; only 3-D volumes are read (one sample per slice)")
    if not 0 <= index < volume.shape[2]:
        raise ReadError(f"has {volume.shape[2]} slices; slice {index} is missing")
    return volume[:, :, index]


def window_to_rgb(values: np.ndarray, level: float, width: float) -> np.ndarray:
    """HxWx3 uint8 grey: level - width/2 -> 0, level + width/2 -> 255, linear, clipped."""
    if width <= 0:
        grey = np.zeros(values.shape, np.uint8)
    else:
        scaled = (values.astype(np.float64) - (level - width / 2)) / width * 255.0
        grey = np.floor(np.clip(np.nan_to_num(scaled), 0.0, 255.0) + 0.5).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def label_to_mask(values: np.ndarray) -> np.ndarray:
    """A label slice as HxW uint8 class ids; raises ReadError for non-integers or > 255."""
    if values.dtype == bool:
        return values.astype(np.uint8)
    if not np.issubdtype(values.dtype, np.integer) and not np.array_equal(values, np.round(values)):
        raise ReadError("holds label values that are not integers; labels must be class ids")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise ReadError(f"holds label values {low:g}..{high:g}; class ids must be 0..254")
    return values.astype(np.uint8)


def _read_part(path: Path, index: int, decode) -> Part:
    """The Part of slice `index` of the volume at `path`, decoded by `decode(slice, min, max)`."""
    try:
        volume, low, high = read_volume(path)
        values = volume_slice(volume, index)
        return Part(array_sha256(values), decode(values, low, high), None)
    except ReadError as exc:
        return Part("", None, str(exc))


def read_sample(root: Path, ref: SampleRef) -> tuple[Part, Part]:
    """(image, mask) Parts of one slice: windowed RGB image and uint8 label (module docstring).

    Each slice is kept per content of its volume file (`segops.data.io.read_derived`): the
    scan reads the volumes in order and every later read (a shuffled training epoch, which
    would otherwise decompress a whole volume for each slice) finds its slices."""
    window = ref.window

    def image(values: np.ndarray, low: float, high: float) -> np.ndarray:
        level, width = window if window is not None else ((low + high) / 2, high - low)
        return window_to_rgb(values, level, width)

    image_path, mask_path = root / ref.image, root / ref.mask
    # nibabel picks the decompressor by the name: the same bytes read differently as .nii
    return (
        read_derived(
            image_path,
            ("nifti-image", image_path.name.endswith(".gz"), ref.index, window),
            lambda: _read_part(image_path, ref.index, image),
        ),
        read_derived(
            mask_path,
            ("nifti-label", mask_path.name.endswith(".gz"), ref.index),
            lambda: _read_part(mask_path, ref.index, lambda values, *_: label_to_mask(values)),
        ),
    )


def _slice_count(path: Path) -> int:
    """Slices of the volume from its header; 1 when unreadable or not 3-D (the scan says why)."""
    import nibabel as nib

    try:
        shape = nib.load(path).shape
    except Exception:  # reported with its reason when the sample is read
        return 1
    return shape[2] if len(shape) == 3 else 1


def _labelled(label: Path, count: int) -> list[int]:
    """Slices 0..count-1 whose label has a non-zero voxel (all of them if it cannot be read)."""
    try:
        volume = read_volume(label)[0]
    except ReadError:
        return list(range(count))
    if volume.ndim != 3:
        return list(range(count))
    return [k for k in range(count) if k >= volume.shape[2] or volume[:, :, k].any()]


def _case_refs(root: Path, case: str, image: Path, options: NiftiOptions) -> list[SampleRef]:
    """One SampleRef per slice of `case` (only labelled ones with `nifti_skip_empty`)."""
    label = Path("labels") / image.name
    if not (root / label).is_file():  # the other suffix, if that one exists
        others = [Path("labels") / f"{case}{s}" for s in SUFFIXES]
        label = next((p for p in others if (root / p).is_file()), label)
    count = _slice_count(image)
    keep = _labelled(root / label, count) if options.skip_empty else range(count)
    rel = image.relative_to(root)
    return [
        SampleRef(f"{case}_{k:03d}", rel, label, None, "nifti", k, case, options.ct_window)
        for k in keep
    ]


def _volumes(root: Path) -> tuple[dict[str, Path], list[str]]:
    """Case id -> image volume path, and the problems (duplicate case ids, no volumes)."""
    cases: dict[str, Path] = {}
    problems = []
    for path in sorted((root / "images").iterdir()):
        case = case_id(path.name)
        if case is None:
            continue
        if case in cases:
            problems.append(f"{path}: two volumes share the case id '{case}'")
            continue
        cases[case] = path
    if not cases:
        problems.append(f"{root}/images: no NIfTI volumes (.nii.gz, .nii)")
    return cases, problems


@register_format("nifti", options=NiftiOptions, read_sample=read_sample, needs="nibabel")
def read_layout(root: Path, options: NiftiOptions) -> Layout:
    """Slices of a NIfTI dataset (see module docstring), split by case."""
    if not (root / "images").is_dir():
        raise FileNotFoundError(f"{root}/images: no such directory (expected NIfTI volumes)")
    classes, problems = read_classes(root / "classes.txt")
    cases, volume_problems = _volumes(root)
    problems += volume_problems
    refs = {case: _case_refs(root, case, path, options) for case, path in cases.items()}
    split_dir = root / "splits"
    given = any((split_dir / f"{s}.txt").is_file() for s in SPLITS)
    if not given:
        samples = [ref for case_refs in refs.values() for ref in case_refs]
        return Layout(root, classes, samples, False, problems)
    stand_ins = {case: SampleRef(case, path, path) for case, path in cases.items()}
    split_cases, split_problems = _assign_splits(
        root, stand_ins, split_dir, {s: f"{s}.txt" for s in SPLITS}
    )
    problems += split_problems
    if not (split_dir / "train.txt").is_file():
        problems.append(f"{split_dir}/train.txt: missing; the other split files need it")
    samples = [replace(r, split=c.split) for c in split_cases for r in refs[c.id]]
    return Layout(root, classes, samples, True, problems)
