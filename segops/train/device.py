"""Device, mixed-precision and determinism choices, resolved once from the train config."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from segops.config import TrainConfig
from segops.errors import ConfigError
from segops.train.threads import ThreadChoice, decide_threads

_interop_set = False  # torch allows setting the inter-op pool once, before it is used


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full precision
    use_scaler: bool  # fp16 needs loss scaling; bf16 does not
    channels_last: bool
    pin_memory: bool
    deterministic: bool
    threads: int = 0  # torch intra-op threads (0: not set by segops)

    def describe(self) -> dict[str, str]:
        amp = str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else "off"
        return {
            "device": str(self.device),
            "amp": amp,
            "channels_last": str(self.channels_last),
            "threads": str(self.threads),
        }


def select_device(spec: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU; `cuda` without a GPU is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={spec!r} but no CUDA GPU is visible; use auto or cpu")
    return device


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    if device.type != "cuda":  # auto on CPU: full precision (bf16 is slower on most CPUs)
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def set_threads(count: int) -> None:
    """Size torch's intra-op pool to `count`, and the inter-op pool once per process (torch
    refuses later)."""
    global _interop_set
    torch.set_num_threads(count)
    if not _interop_set:
        _interop_set = True
        # RuntimeError when inter-op work already ran in this process: it keeps its pool
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(count)


def apply_thread_policy(setting: str | int, key: str = "train.threads") -> ThreadChoice:
    """Set torch's thread pools as `setting` (`auto` or a count, read from config `key`)
    decides (segops.train.threads); returns the choice and its reason."""
    choice = decide_threads(setting, key=key)  # only `auto` reads the machine (0.1 s sample)
    set_threads(choice.threads)
    return choice


# Smallest input side from which a model's CPU training step is faster in channels-last
# (bench/channels_last.py, one thread, paired rounds: U-Net 0.72 of contiguous at 128 px, SegNet
# 0.98; at 64 px neither gained). The ResNet-50 FCN and DeepLabV3 were slower (1.05, 1.22 at
# 128 px), MobileNet LR-ASPP no faster: they, and the instance models (torchvision's detection
# API), stay contiguous on CPU.
CHANNELS_LAST_CPU_FROM = {"unet": 128, "segnet": 128}


def channels_last_helps(model: str, side: int) -> bool:
    """Whether `train.channels_last: auto` trains `model` on `side`-pixel inputs channels-last
    on CPU (on CUDA it always does)."""
    start = CHANNELS_LAST_CPU_FROM.get(model)
    return start is not None and side >= start


def resolve_runtime(cfg: TrainConfig, model: str | None = None, side: int | None = None) -> Runtime:
    """Pick device, autocast dtype, channels-last and pinned memory for `cfg`, and apply its
    thread policy. `channels_last: auto` is on with CUDA, and on CPU for a `model` that gains
    from it at inputs of `side` pixels (`channels_last_helps`); off when either is not given."""
    device = select_device(cfg.device)
    dtype = _amp_dtype(cfg.amp, device)
    on_cuda = device.type == "cuda"
    helps = model is not None and side is not None and channels_last_helps(model, side)
    channels_last = (on_cuda or helps) if cfg.channels_last == "auto" else cfg.channels_last
    threads = apply_thread_policy(cfg.threads).threads
    fp16 = dtype == torch.float16
    return Runtime(device, dtype, fp16, channels_last, on_cuda, cfg.deterministic, threads)


def configure_determinism(runtime: Runtime) -> None:
    """Deterministic kernels where asked. On CUDA some segmentation ops have no deterministic
    kernel (bilinear upsample backward, NLL loss), so there it warns instead of raising."""
    on_cuda = runtime.device.type == "cuda"
    if runtime.deterministic:
        if on_cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=on_cuda)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = on_cuda


def autocast(runtime: Runtime) -> torch.autocast:
    """Autocast to the runtime's AMP dtype; a no-op context at full precision."""
    dtype = runtime.amp_dtype or torch.float32
    return torch.autocast(runtime.device.type, dtype=dtype, enabled=runtime.amp_dtype is not None)


def keep_threads(runtime: Runtime, setting: str | int, record: Path, resuming: bool) -> Runtime:
    """The thread count a run keeps for its whole life: `train.threads: auto` decides once, at
    the run's first start (written to `record`); a resume takes that count again, since another
    count sums in another order and the resumed weights would not equal an uninterrupted run's.
    An explicit count is always used as given. Under torchrun every rank takes rank 0's count
    (broadcast) and only rank 0 writes `record`: the ranks of one run sum alike."""
    threads = runtime.threads
    if setting == "auto" and resuming and record.is_file():
        threads = int(record.read_text().strip())
    threads, main = _rank0_count(threads)
    if threads != runtime.threads or threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        runtime = replace(runtime, threads=threads)
    if main:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.tmp")
        tmp.write_text(f"{threads}\n")
        tmp.replace(record)
    return runtime


def _rank0_count(threads: int) -> tuple[int, bool]:
    """(rank 0's `threads`, whether this process is rank 0) in a process group, else
    (`threads`, True)."""
    if not (dist.is_available() and dist.is_initialized()):
        return threads, True
    box = [threads]
    dist.broadcast_object_list(box, src=0)
    return int(box[0]), dist.get_rank() == 0


_recent: dict[str | int, tuple[float, ThreadChoice]] = {}


def inference_threads(
    setting: str | int, key: str = "predict.threads", max_age: float = 60.0
) -> ThreadChoice:
    """`apply_thread_policy` for scoring (predict, serve, evaluate): a process that loads
    several models decides `auto` at most once per `max_age` seconds (a decision samples the
    CPUs for 0.1 s), and applies that count each time."""
    now = time.monotonic()
    seen = _recent.get(setting)
    if setting == "auto" and seen is not None and now - seen[0] < max_age:
        set_threads(seen[1].threads)
        return seen[1]
    choice = apply_thread_policy(setting, key)
    _recent[setting] = (now, choice)
    return choice
