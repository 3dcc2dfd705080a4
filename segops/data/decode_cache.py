"""One process-wide, bounded cache of decoded dataset files, shared by every step of a flow.

Validation, `load_dataset` (called again by training, evaluation, Grad-CAM, the ONNX check
and the model report), the training `Dataset` and the evaluation all read samples through
`segops.data.io.read_file`; without this cache one `segops run` decoded every image and mask
about seven times. Three stores, each a least-recently-used map under a byte budget:

- `DIGESTS`: a file's identity (absolute path; device, inode, size, mtime_ns, ctime_ns) to
  the sha256 of its bytes, so a file seen before is not read again. A file changed within
  `RACY_NS` of when it was hashed could keep its size and times (timestamps are coarse), so
  such an entry is trusted only after its bytes are hashed again ("racily clean", as git does).
- `DECODED`: (sha256 of the bytes, decoder and pixel limit) to the decoded array or the
  decode problem. Keyed by content, a changed file is never served stale, and a copy of a
  dataset (a folder imported into `data/`) finds its decodes. Callers get a fresh copy: the
  cached array never changes.
- `FACTS`: per-sample facts of the manifest scan (`segops.data.facts`), by content too.

`DECODED` also keeps arrays derived from a file that many samples share (`segops.data.io.
read_derived`: a NIfTI slice, a COCO mask), under that file's sha256 and what was derived.

The budget is `SEGOPS_DECODE_CACHE_MB` (0 turns caching off) or a quarter of the memory this
process may use, at most 4 GiB, divided among a torchrun node's ranks; the facts and
digests get an eighth of it. Beyond the budget the oldest entries go: a large dataset decodes
again instead of running out of memory. A forked child (a DataLoader worker) reads what it
inherited and adds nothing.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RACY_NS = 2_000_000_000  # 2 s: coarser than any file system's timestamp granularity here
MAX_DEFAULT = 4 << 30
BUDGET_ENV = "SEGOPS_DECODE_CACHE_MB"


def memory_limit() -> int:
    """Bytes of memory this process may use: physical memory, or a smaller cgroup limit."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(text)) if text.isdigit() else total


def default_budget() -> int:
    """The decoded-array budget in bytes: `SEGOPS_DECODE_CACHE_MB`, else min(RAM/4, 4 GiB)
    shared by the processes of one torchrun node (`LOCAL_WORLD_SIZE`): each rank caches the
    whole dataset over its epochs, and 4 ranks with a quarter of the memory each would take
    all of it."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "") or 1))
    except ValueError:
        local = 1
    default = min(memory_limit() // 4, MAX_DEFAULT) // local
    try:
        return max(0, int(float(text) * (1 << 20))) if text else default
    except ValueError:  # read when segops.data is imported: warn, never fail every command
        warnings.warn(
            f"{BUDGET_ENV}={text!r} is not a number of MiB; using the default", stacklevel=2
        )
        return default


@dataclass
class Counts:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class Store:
    """A thread-safe LRU map under `budget` bytes (each entry costs what `put` is told)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.counts = Counts()
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()
        self._owner = os.getpid()

    @property
    def used(self) -> int:
        """Bytes held now."""
        return self._used

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any:
        """The value under `key` (now the most recently used), or None."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.counts.misses += 1
                return None
            self._entries.move_to_end(key)
            self.counts.hits += 1
            return found[0]

    def accepts(self, cost: int) -> bool:
        """Whether `put` would keep a value of `cost` bytes: not over the whole budget, and
        not in a forked child."""
        return cost <= self.budget and os.getpid() == self._owner

    def put(self, key: Hashable, value: Any, cost: int) -> None:
        """Keep `value` under `key`, evicting the least recently used beyond the budget
        (unless it `accepts` nothing of that cost)."""
        if not self.accepts(cost):
            return
        with self._lock:
            old = self._entries.pop(key, None)
            self._used -= old[1] if old else 0
            self._entries[key] = (value, cost)
            self._used += cost
            while self._used > self.budget:
                _, (_, freed) = self._entries.popitem(last=False)
                self._used -= freed
                self.counts.evictions += 1

    def reset(self, budget: int | None = None) -> None:
        """Empty the store (and set a new `budget` when given); counts start again."""
        with self._lock:
            self._entries.clear()
            self._used = 0
            self.counts = Counts()
            self.budget = self.budget if budget is None else budget
            self._owner = os.getpid()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # a lock held by another thread at fork stays held


DECODED = Store(default_budget())
FACTS = Store(min(DECODED.budget // 8, 512 << 20))
DIGESTS = Store(FACTS.budget)


def _after_fork() -> None:
    for store in (DECODED, FACTS, DIGESTS):
        store._after_fork()


os.register_at_fork(after_in_child=_after_fork)


def configure(budget: int) -> None:
    """Empty every store and give decoded arrays `budget` bytes (facts, digests an eighth)."""
    DECODED.reset(budget)
    FACTS.reset(min(budget // 8, 512 << 20))
    DIGESTS.reset(FACTS.budget)


Signature = tuple[int, int, int, int, int]


def signature(path: Path) -> Signature:
    """What identifies one version of the file at `path`: device, inode, size, mtime_ns,
    ctime_ns (OSError when it cannot be stat'ed)."""
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def known_digest(path: Path, sig: Signature) -> str | None:
    """sha256 of the file at `path` remembered for this very `sig`, if it can be trusted
    without reading the file (not racily clean); None otherwise."""
    found = DIGESTS.get(os.path.abspath(path))
    return found[1] if found is not None and found[0] == sig and found[2] else None


def remember_digest(path: Path, sig: Signature, sha: str, read_ns: int) -> None:
    """Remember that the file at `path`, as `sig`, hashed to `sha` when read after
    `read_ns` (`time.time_ns()` taken before its bytes were read). A write after that time
    changes the file's times unless they were within `RACY_NS` of it: then the entry is kept
    but not trusted, and the file is read again next time."""
    trusted = read_ns - max(sig[3], sig[4]) > RACY_NS
    key = os.path.abspath(path)
    DIGESTS.put(key, (sig, sha, trusted), 200 + len(key))


def decoded(sha: str, how: Hashable) -> tuple[np.ndarray | None, str | None] | None:
    """(a copy of the array, problem) that decoding `how` made of bytes hashing to `sha`, or
    None when not kept."""
    found = DECODED.get((sha, how))
    if found is None:
        return None
    array, problem = found
    return (None if array is None else array.copy()), problem


def keep_decoded(sha: str, how: Hashable, array: np.ndarray | None, problem: str | None) -> None:
    """Keep what decoding `how` made of bytes hashing to `sha` (a read-only copy of `array`)."""
    cost = _cost(array, problem)
    if DECODED.accepts(cost):
        DECODED.put((sha, how), (_read_only_copy(array), problem), cost)


def _cost(array: np.ndarray | None, problem: str | None) -> int:
    return 256 + (array.nbytes if array is not None else len(problem or ""))


def _read_only_copy(array: np.ndarray | None) -> np.ndarray | None:
    if array is None:
        return None
    kept = array.copy()
    kept.flags.writeable = False
    return kept


def enabled() -> bool:
    """Whether decoded arrays are kept at all (`SEGOPS_DECODE_CACHE_MB` is not 0)."""
    return DECODED.budget > 0


def derived(key: Hashable) -> tuple[str, np.ndarray] | None:
    """(sha256, a copy of the array) kept by `keep_derived` under `key`, or None."""
    found = DECODED.get(("derived", key))
    if found is None:
        return None
    sha, array = found
    return sha, array.copy()


def keep_derived(key: Hashable, sha: str, array: np.ndarray) -> None:
    """Keep an array derived from a file's content (`segops.data.io.read_derived`): its
    sha256 and a read-only copy, under `key` (the file's sha256 and how it was derived)."""
    cost = _cost(array, None)
    if DECODED.accepts(cost):
        DECODED.put(("derived", key), (sha, _read_only_copy(array)), cost)


def stats() -> dict[str, Any]:
    """Hits, misses, evictions, entries and bytes of each store (for tests and benchmarks)."""
    stores = {"decoded": DECODED, "facts": FACTS, "digests": DIGESTS}
    return {
        name: {**vars(s.counts), "entries": len(s), "bytes": s.used, "budget": s.budget}
        for name, s in stores.items()
    }
