"""Inside a torchrun rank: the process group, the model wrapper, samplers and collectives.

`World` says which rank this process is. `SINGLE` (one plain process, no process group) is the
default everywhere, and then every helper here is a no-op that touches no `torch.distributed`
API: the single-process driver stays as it was, as fast and bit for bit.

Under torchrun (`segops.train.launch` starts it), `init_world` joins the group. Training
batches come from a DistributedSampler (`ShardedShuffle`) drawing the single-process shuffle,
so rank `r` takes every `world`-th sample of the same permutation; validation is sharded by
whole batches (`shard_batches`, no padding duplicates) and its results are gathered in batch
order, so the metrics equal those of one process exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from segops.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    distributed: bool = False  # a process group exists (torchrun), even with one rank
    backend: str = "none"

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes checkpoints, history and reports progress."""
        return self.rank == 0


SINGLE = World()


def resolve_backend(backend: str, device_type: str) -> str:
    """`auto` is NCCL on CUDA and gloo on CPU; NCCL without CUDA is a ConfigError."""
    if backend == "auto":
        return "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl" and device_type != "cuda":
        raise ConfigError(
            "train.distributed.backend=nccl needs CUDA GPUs, but training runs on the CPU here: "
            "use train.distributed.backend=auto or gloo"
        )
    return backend


def init_world(backend: str, device: str) -> World:
    """Join torchrun's process group (RANK, WORLD_SIZE, LOCAL_RANK from the environment); on
    CUDA each rank takes the GPU of its local rank first."""

    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    chosen = resolve_backend(backend, "cuda" if cuda else "cpu")
    if "TORCHELASTIC_RUN_ID" in os.environ:  # under torchrun: a store prefix per round
        store, rank, size = next(dist.rendezvous("env://"))
        store = dist.PrefixStore(f"segops/round-{_round(store, rank)}", store)
        dist.init_process_group(chosen, store=store, rank=rank, world_size=size)
    else:
        dist.init_process_group(chosen)
    return World(rank, size, local, True, chosen)


def _round(store: object, rank: int) -> str:
    """Which rendezvous round this process joins, the same on every rank of the round.

    torchrun's agent keeps the store it serves at MASTER_ADDR:MASTER_PORT across restarts, so
    without a prefix a restarted rank can read the address a dead rank of the previous round
    published and gloo fails with `connectFullMesh ... Connection refused` (about one restart
    in two here). On one node every rank has the agent's restart count; across nodes the
    agents' counts can differ (a healthy node restarts without counting), so each rank counts
    its own joins in the store: every rank of a round has joined as often as the others."""
    if int(os.environ.get("GROUP_WORLD_SIZE", "1")) == 1:
        return "r" + os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return "j" + str(store.add(f"segops/joins/{rank}", 1))  # type: ignore[attr-defined]


def close_world(world: World, clean: bool = True) -> None:
    """Leave the process group; after a `clean` run, at a last barrier (no rank leaves while
    another still writes), after a failure at once (the others may never get there)."""
    if world.distributed:
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def rank_seed(epoch_seed: int, rank: int) -> int:
    """The torch seed of `rank` in an epoch seeded `epoch_seed`: rank 0 keeps the epoch's own
    seed (one process trains as before); others get their own augmentation stream."""
    return epoch_seed + (rank << 40)


def wrap_model(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The module to train with: `model` itself for one plain process, else DDP over it (with
    SyncBatchNorm on CUDA; on CPU, gloo has no SyncBatchNorm, so BN statistics stay per rank).
    The parameters stay those of `model`, so its optimiser and checkpoints are unchanged."""
    if not world.distributed:
        return model

    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[world.local_rank])
    return DistributedDataParallel(model)


class ShardedShuffle(DistributedSampler):
    """A DistributedSampler whose permutation comes from the loader's `generator`, as a
    single process's RandomSampler draws it: fit reseeds that generator each epoch (so
    `set_epoch` has nothing left to change), and the DataLoader draws its base seed from it
    before the sampler, in both cases alike. Rank `r` takes samples r, r+W, ... of the
    permutation (padded by repeating its start, as DistributedSampler does)."""

    def __init__(self, dataset: Dataset, world: World, generator: torch.Generator) -> None:
        super().__init__(dataset, world.size, world.rank, shuffle=True)
        self.generator = generator

    def __iter__(self):
        order = torch.randperm(len(self.dataset), generator=self.generator).tolist()
        order += order[: self.total_size - len(order)]
        return iter(order[self.rank : self.total_size : self.num_replicas])


def train_loader(
    dataset: Dataset, batch_size: int, generator: torch.Generator, world: World, **kw
) -> DataLoader:
    """Shuffled training batches (`kw`: DataLoader options, `drop_last` among them, dropped on
    ranks whose share is not above one batch). One process: shuffled by `generator` (reseeded
    each epoch). Ranks: a `ShardedShuffle` of the same permutation, so W ranks x batch B see
    the batches of one process x batch W*B."""
    if not world.distributed:
        return DataLoader(dataset, batch_size, shuffle=True, generator=generator, **kw)
    sampler = ShardedShuffle(dataset, world, generator)
    kw["drop_last"] = kw.get("drop_last", False) and len(sampler) > batch_size
    return DataLoader(dataset, batch_size, sampler=sampler, generator=generator, **kw)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell a DistributedSampler which epoch's permutation to draw (no-op otherwise)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)


def shard_batches(count: int, batch_size: int, world: World) -> list[list[int]]:
    """This rank's validation batches: batch `j` of the single-process order (samples
    j*B..j*B+B-1) goes to rank j mod W. Every batch is what one process would have seen, no
    sample twice, none padded; `ordered` puts the per-rank results back in batch order."""
    starts = range(0, count, batch_size)
    batches = [list(range(s, min(s + batch_size, count))) for s in starts]
    return batches[world.rank :: world.size]


def ordered(per_rank: list[list[Any]]) -> list[Any]:
    """Per-batch results gathered from every rank (rank r held batches r, r+W, ...) back in
    single-process batch order."""
    size, total = len(per_rank), sum(len(part) for part in per_rank)
    return [per_rank[j % size][j // size] for j in range(total)]


def gather_objects(value: Any, world: World) -> list[Any]:
    """`value` of every rank, by rank (one process: `[value]`)."""
    if not world.distributed:
        return [value]

    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """`tensor` summed over the ranks (one process: unchanged). Integer tensors (a confusion
    matrix) sum exactly."""
    if not world.distributed:
        return tensor

    if world.backend == "nccl":  # NCCL reduces GPU tensors only
        on_gpu = tensor.cuda()
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        return tensor.copy_(on_gpu.cpu()) if tensor.device.type == "cpu" else on_gpu
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sync_buffers(model: nn.Module, world: World) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank: what rank 0 checkpoints is
    what every rank validates with."""
    if world.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def epoch_over_ranks(train: dict[str, float], world: World) -> dict[str, float]:
    """A training epoch's mean `loss` and `images` over all ranks (one process: as is)."""
    if not world.distributed:
        return train
    sums = torch.tensor([train["loss"] * train["images"], train["images"]], dtype=torch.float64)
    total, images = all_reduce_sum(sums, world).tolist()
    return {**train, "loss": total / max(1.0, images), "images": images}
