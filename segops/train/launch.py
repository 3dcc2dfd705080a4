"""Launch a distributed run: `python -m torch.distributed.run` (torchrun) over
`segops.train.worker`, from the CLI, the flow's train task and reproduce alike.

`plan_launch` resolves `train.distributed` (world size, backend) and refuses, in milliseconds,
what cannot run here: NCCL without CUDA, more processes than visible GPUs, several nodes
without a rendezvous endpoint. `check_endpoint` gives a remote rendezvous endpoint a few
seconds to answer. `launch` then runs torchrun as a subprocess: rank 0 prints its callback
events on stdout as `@segops-event {json}` lines, which are relayed here to the caller's
callbacks (progress bars, MLflow metrics); every other line is passed on to stderr. The result
is read from the file rank 0 writes, `<train.out_dir>/distributed/result.json`.
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segops.config import Config, config_hash, save_config
from segops.errors import ConfigError, SegopsError
from segops.train.callbacks import Callback, CallbackList
from segops.train.device import select_device
from segops.train.distributed import resolve_backend
from segops.train.fit import TrainResult

EVENT = "@segops-event "
RDZV_WAIT_S = 10.0  # how long a remote rendezvous endpoint gets to answer


class DistributedError(SegopsError):
    """torchrun ended without a result (a rank failed and no restart was left)."""


class DistributedCrash(DistributedError):
    """A rank crashed (out of memory, a lost node, a collective timeout) after torchrun's own
    restarts: the flow's retry of the train task resumes from `last.pt`."""

    transient = True


@dataclass(frozen=True)
class LaunchPlan:
    nproc_per_node: int
    nnodes: int
    backend: str  # gloo or nccl
    world_size: int


def plan_launch(cfg: Config) -> LaunchPlan:
    """World size and backend of `cfg.train.distributed`; ConfigError naming the setting when
    this machine cannot run it. One process per node on one node needs no check at all."""
    dist = cfg.train.distributed
    if dist.nproc_per_node == 1 and dist.nnodes == 1 and dist.rdzv_endpoint is None:
        return LaunchPlan(1, 1, "none", 1)

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    spec = cfg.train.device
    on_gpu = dist.backend == "nccl" or spec.startswith("cuda") or (spec == "auto" and gpus > 0)
    if dist.backend == "nccl" and not gpus:  # before the device check: name the setting asked
        resolve_backend("nccl", "cpu")
    nproc = dist.nproc_per_node
    if on_gpu and nproc != "auto" and nproc > gpus:
        raise ConfigError(
            f"train.distributed.nproc_per_node={nproc} but {gpus} GPU(s) are visible on this "
            f"machine (train.device={cfg.train.device}, backend {dist.backend}): ask for at most "
            "that many (or auto), or train on the CPU with train.device=cpu and backend gloo"
        )
    device = select_device(cfg.train.device)
    backend = resolve_backend(dist.backend, device.type)
    if nproc == "auto":
        nproc = gpus if device.type == "cuda" else 1
    if dist.nnodes > 1 and not dist.rdzv_endpoint:
        raise ConfigError(
            f"train.distributed.nnodes={dist.nnodes} needs train.distributed.rdzv_endpoint "
            "(host:port that every node reaches; the node on that host serves the rendezvous)"
        )
    if dist.node_rank >= dist.nnodes:
        raise ConfigError(
            f"train.distributed.node_rank={dist.node_rank} must be below nnodes={dist.nnodes}"
        )
    return LaunchPlan(nproc, dist.nnodes, backend, nproc * dist.nnodes)


def world_size(cfg: Config) -> int:
    """Processes that train `cfg` together (1: the plain single-process driver)."""
    return plan_launch(cfg).world_size


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"train.distributed.rdzv_endpoint={endpoint!r} is not host:port (e.g. 10.0.0.1:29400)"
        )
    return host.strip("[]"), int(port)


def _is_local(addresses: set[str]) -> bool:
    try:
        own = set(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        own = set()
    return any(a.startswith("127.") or a == "::1" or a in own for a in addresses)


def check_endpoint(endpoint: str, wait_s: float = RDZV_WAIT_S) -> None:
    """ConfigError when the rendezvous `endpoint` does not resolve, or, on another machine,
    does not accept a connection within `wait_s` seconds. On this machine torchrun serves it."""
    host, port = _split_endpoint(endpoint)
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except socket.gaierror as exc:
        raise ConfigError(
            f"train.distributed.rdzv_endpoint={endpoint!r}: host {host!r} does not resolve ({exc})"
        ) from None
    if _is_local(found):
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, wait_s)):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"train.distributed.rdzv_endpoint={endpoint!r}: nothing answers there after "
                    f"{wait_s:.0f} s ({exc}). Start the node on {host} first (its launcher "
                    "serves the rendezvous), or correct the host and port; nothing was trained"
                ) from None
            time.sleep(0.5)


def torchrun_command(cfg: Config, plan: LaunchPlan, config_file: Path, resume: bool) -> list:
    """The `python -m torch.distributed.run ... -m segops.train.worker` command line."""
    dist = cfg.train.distributed
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    cmd += [f"--nproc-per-node={plan.nproc_per_node}", f"--nnodes={plan.nnodes}"]
    cmd += [f"--max-restarts={dist.max_restarts}"]
    if dist.rdzv_endpoint:
        rdzv_id = f"segops-{config_hash(cfg)[:16]}"  # the same on every node of the run
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={dist.rdzv_endpoint}"]
        cmd += [f"--rdzv-id={rdzv_id}", f"--node-rank={dist.node_rank}"]
    else:
        cmd += ["--standalone"]  # one node: a rendezvous on a free local port
    cmd += ["-m", "segops.train.worker", str(config_file)]
    return cmd + (["--resume"] if resume else [])


def _relay(event: dict[str, Any], callbacks: Callback) -> None:
    args = event["args"]
    if event["event"] == "checkpoint":
        args = [Path(args[0]), args[1]]
    getattr(callbacks, f"on_{event['event']}")(*args)


def _die_with_parent() -> None:
    """In the torchrun child: receive SIGTERM when the launching process dies, even by
    SIGKILL (Linux), so no orphaned group keeps writing into a folder a rerun resumes."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _run(cmd: list[str], env: dict[str, str], callbacks: Callback) -> tuple[int, list[str]]:
    """Run torchrun, relaying rank 0's events; (exit status, last lines of other output)."""
    tail: collections.deque[str] = collections.deque(maxlen=30)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        bufsize=1,
        preexec_fn=_die_with_parent,
    )
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith(EVENT):
                _relay(json.loads(line[len(EVENT) :]), callbacks)
            else:
                tail.append(line)
                sys.stderr.write(line)
        return proc.wait(), list(tail)
    except BaseException:
        proc.terminate()  # torchrun stops its ranks on SIGTERM
        proc.wait(timeout=60)
        raise


def _config_name(cfg: Config) -> str:
    """The file the ranks of this node read: one per node, since the nodes of a run share
    `train.out_dir` and write their configs (which differ in `node_rank`) at the same time."""
    dist = cfg.train.distributed
    return "config.yaml" if dist.nnodes == 1 else f"config-node{dist.node_rank}.yaml"


def launch(
    cfg: Config, *, resume: bool = False, callbacks: list[Callback] | tuple = ()
) -> TrainResult:
    """Train `cfg` under torchrun with `train.distributed`'s world (see the module docstring);
    returns rank 0's TrainResult. Ranks run with OMP_NUM_THREADS=1 unless it is set."""
    plan = plan_launch(cfg)
    if cfg.train.distributed.rdzv_endpoint:
        check_endpoint(cfg.train.distributed.rdzv_endpoint)
    work = Path(cfg.train.out_dir) / "distributed"
    work.mkdir(parents=True, exist_ok=True)
    config = work / _config_name(cfg)
    save_config(cfg, config)
    result_file = work / "result.json"
    result_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    cbs = CallbackList(list(callbacks))
    rc, tail = _run(torchrun_command(cfg, plan, config, resume), env, cbs)
    if rc != 0 or not result_file.is_file():
        where = "" if rc else f"; no {result_file} (rank 0 ran on another node?)"
        raise (DistributedCrash if rc else DistributedError)(
            f"torchrun (world size {plan.world_size}, {plan.backend}) exited with status {rc}"
            f"{where}. Its last lines:\n{''.join(tail)}"
        )
    result = TrainResult(**json.loads(result_file.read_text()))
    cbs.on_train_end(result)
    return result
