"""Distributed data parallel from torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE): NCCL on GPUs, gloo on CPU.

``--distributed`` without torchrun starts one process per local GPU (or ``--nproc_per_node``) through torch's elastic
launcher on a free port (or ``--port``). ``batch_size`` is per process.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_environment() -> DistEnv | None:
    """The process's place in a torchrun/elastic job, or None when not launched by one."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return DistEnv(rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                   world_size=int(os.environ["WORLD_SIZE"]),
                   local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))


def init(env: DistEnv, device_type: str) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU) and return this process's device."""
    if device_type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world_size))
    if env.enabled and not dist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size, timeout=timedelta(minutes=30),
                                **kwargs)
        log.info("rank %d of %d (%s, %s)", env.rank, env.world_size, backend, device)
    return device


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(entrypoint: Callable[[list[str]], None], argv: list[str], nproc: int, port: int) -> None:
    """Run ``entrypoint(argv)`` in ``nproc`` local processes through torch's elastic launcher."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    port = port or free_port()
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"sv-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{port}", max_restarts=0,
                          monitor_interval=0.5, start_method="spawn")
    log.info("launching %d processes (rendezvous on 127.0.0.1:%d)", nproc, port)
    elastic_launch(config, entrypoint)(argv)


def all_gather(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` (picklable, e.g. CPU tensors), in rank order; [obj] when not distributed."""
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def all_true(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """Whether ``flag`` holds on every rank (one small all-reduce)."""
    if not env.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()
