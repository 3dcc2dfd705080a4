"""A shuffled training epoch over a NIfTI dataset: slices kept by the decode cache against
no cache (`segops.data.decode_cache.configure(0)`), side by side in one process.

Writes `--cases` random int16 volumes of `--side`x`--side`x`--depth` (and uint8 labels) as
.nii.gz into a temporary folder, scans them (`load_dataset`, as validation and training do),
then times `SegmentationDataset.load` over every slice in a shuffled order. Rounds alternate
the two sides; each side starts from an empty cache and scans first. Without the cache each
slice read decompresses its whole volume once segops' 4-volume LRU (`nifti._load`) no
longer holds it.

    python bench/nifti_epoch.py [--cases 12] [--side 128] [--depth 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segops.config import DataConfig
from segops.data import decode_cache
from segops.data.dataset import SegmentationDataset
from segops.data.manifest import load_dataset


def write_volumes(root: Path, cases: int, side: int, depth: int) -> None:
    rng = np.random.default_rng(0)
    for c in range(cases):
        image = rng.integers(-1000, 1000, (side, side, depth)).astype(np.int16)
        label = (rng.random((side, side, depth)) > 0.7).astype(np.uint8)
        for folder, array in (("images", image), ("labels", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.Nifti1Image(array, np.eye(4)).to_filename(root / folder / f"case{c:02d}.nii.gz")
    (root / "classes.txt").write_text("background\nforeground\n")


def epoch(root: Path, cached: bool, seed: int) -> float:
    """Seconds of one shuffled pass after a scan, from an empty cache (or none)."""
    decode_cache.configure(decode_cache.default_budget() if cached else 0)
    info = load_dataset(DataConfig(root=root, format="nifti"))
    dataset = SegmentationDataset(info.root, info.manifest)
    order = np.random.default_rng(seed).permutation(len(dataset))
    start = time.perf_counter()
    for i in order:
        dataset.load(int(i))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--depth", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ct"
        write_volumes(root, args.cases, args.side, args.depth)
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.rounds):
            for cached in (False, True) if r % 2 == 0 else (True, False):
                times[cached].append(epoch(root, cached, seed=r))
    slices = args.cases * args.depth
    none, kept = statistics.median(times[False]), statistics.median(times[True])
    print(f"{args.cases} cases of {args.side}x{args.side}x{args.depth}, {slices} slices")
    print(f"no cache: {none:.3f} s/epoch  {' '.join(f'{t:.3f}' for t in times[False])}")
    print(f"cached:   {kept:.3f} s/epoch  {' '.join(f'{t:.3f}' for t in times[True])}")
    print(f"ratio cached / no cache: {kept / none:.4f}")


if __name__ == "__main__":
    main()
