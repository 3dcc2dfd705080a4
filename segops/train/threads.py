"""How many CPU threads torch may use: `train.threads` (`auto` or a number).

PyTorch starts one intra-op thread per core of the machine, whatever this process may use and
whoever else is running. On a shared machine that oversubscribes the cores: two threads on a
busy 2-core machine were 3.4-13.5x slower per step than one (issue 17). `auto` decides once,
when the runtime is resolved:

1. usable = the cores this process may use: its CPU affinity, capped by a cgroup CPU quota
   (v2 `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`), rounded up; divided by
   LOCAL_WORLD_SIZE under torchrun (each rank gets its share). An explicit OMP_NUM_THREADS
   (a launcher or the user decided) is taken as is.
2. others = cores kept busy by other processes: the larger of the 1-minute load average minus
   the one thread this process itself has been running, and the cores busy during a 0.1 s
   sample of /proc/stat taken while this process sleeps (the load average lags a process
   that started seconds ago by up to a minute).
3. threads = the machine's cores minus `others`, to the nearest core, clamped to 1..usable. An idle
   machine gets `usable`; a machine whose cores are all busy elsewhere (oversubscribed) gets 1.

Pure functions of their inputs (stdlib only, no torch), so the decision is tested with fake
affinity, quota and load; `read_cpu_facts` reads the real ones.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuFacts:
    affinity: int  # cores in this process's affinity mask
    quota: float | None  # cgroup CPU quota in cores (None: unlimited)
    machine: int  # cores of the machine (os.cpu_count)
    load1: float  # 1-minute load average of the machine
    omp: int | None = None  # OMP_NUM_THREADS, when set to a positive number
    busy: float = 0.0  # cores busy (all processes but this sleeping one) in a short sample
    local_world: int = 1  # processes of this job on this machine (torchrun LOCAL_WORLD_SIZE)


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # one line for the log and the run's tags


def parse_cpu_max(text: str) -> float | None:
    """Cores allowed by a cgroup v2 `cpu.max` ("max 100000" or "150000 100000")."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    quota, period = float(parts[0]), float(parts[1])
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_us: str, period_us: str) -> float | None:
    """Cores allowed by cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1: unlimited)."""
    quota, period = float(quota_us), float(period_us)
    return quota / period if quota > 0 and period > 0 else None


def usable_cores(facts: CpuFacts) -> int:
    """Cores this process may use: affinity capped by the quota, shared among local ranks."""
    cores = facts.affinity
    if facts.quota is not None:
        cores = min(cores, max(1, math.ceil(facts.quota)))
    return max(1, cores // max(1, facts.local_world))


def decide_threads(
    setting: str | int, facts: CpuFacts | None = None, key: str = "train.threads"
) -> ThreadChoice:
    """The torch thread count for config `key` (`train.threads`, `predict.threads`) =
    `setting` (see the module docstring); `auto` reads this machine's `facts` when not given."""
    if setting != "auto":
        return ThreadChoice(int(setting), f"{key}={setting}")
    facts = facts or read_cpu_facts()
    if facts.omp is not None:
        return ThreadChoice(facts.omp, f"OMP_NUM_THREADS={facts.omp}")
    usable = usable_cores(facts)
    others = max(0.0, facts.load1 - 1.0, facts.busy)
    free = math.floor(facts.machine - others + 0.5)  # to the nearest core
    threads = min(usable, max(1, free))
    why = f"auto: {usable} usable cores, load {facts.load1:.2f}, busy {facts.busy:.1f} of "
    why += f"{facts.machine} cores"
    if threads < usable:
        why += f" (others busy on {others:.1f}): {threads}"
    return ThreadChoice(threads, why)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroup() -> str:
    """This process's cgroup v2 path ("0::/some/path" in /proc/self/cgroup), "" if none."""
    for line in (_read(Path("/proc/self/cgroup")) or "").splitlines():
        if line.startswith("0::"):
            return line[3:].lstrip("/")
    return ""


def cgroup_quota(root: Path = CGROUP) -> float | None:
    """The CPU quota in cores from cgroup v2 (own group, then the root) or v1; None if none."""
    own = _own_cgroup()
    for folder in (root / own, root) if own else (root,):
        text = _read(folder / "cpu.max")
        if text is not None:
            return parse_cpu_max(text)
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        quota, period = _read(v1 / "cpu.cfs_quota_us"), _read(v1 / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return parse_cfs(quota, period)
    return None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat; None where there is none."""
    line = (_read(Path("/proc/stat")) or "").split("\n", 1)[0].split()
    if not line or line[0] != "cpu":
        return None
    values = [int(v) for v in line[1:9]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def busy_cores(window: float = 0.1) -> float:
    """Cores busy over `window` seconds while this thread sleeps (0.0 if unknown)."""
    before = _cpu_times()
    time.sleep(window)
    after = _cpu_times()
    if before is None or after is None or after[1] <= before[1]:
        return 0.0
    share = (after[0] - before[0]) / (after[1] - before[1])
    return share * (os.cpu_count() or 1)


def read_cpu_facts() -> CpuFacts:
    """This process's affinity, cgroup quota, the machine's cores and load, OMP_NUM_THREADS."""
    machine = os.cpu_count() or 1
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = machine
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = 0.0
    return CpuFacts(
        affinity=affinity,
        quota=cgroup_quota(),
        machine=machine,
        load1=load1,
        omp=_env_int("OMP_NUM_THREADS"),
        local_world=_env_int("LOCAL_WORLD_SIZE") or 1,
        busy=busy_cores(),
    )
