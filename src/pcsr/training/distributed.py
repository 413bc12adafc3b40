"""torchrun / DDP plumbing. Single-process runs go through the same calls, which then do nothing."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_from_env(use_cuda: bool) -> DistInfo:
    """Join the process group torchrun (or a test) describes in the environment, if WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")),
                    int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=info.rank, world_size=world)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_flags(info: DistInfo, flags: list[bool]) -> list[bool]:
    """Rank 0's decisions (checkpoint now? stop?) for every rank, so collectives stay in step."""
    if not info.enabled:
        return flags
    t = torch.tensor([int(f) for f in flags], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, 0)
    return [bool(v) for v in t.tolist()]


def gather_generator_states(info: DistInfo, state: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's data-generator state (uint8), so a checkpoint resumes every rank exactly."""
    if not info.enabled:
        return [state]
    t = state.to(torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    out = [torch.empty_like(t) for _ in range(info.world)]
    dist.all_gather(out, t)
    return [o.cpu().to(torch.uint8) for o in out]


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def sync_buffers(info: DistInfo, module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm statistics) to every rank. DDP does this at the start of each
    forward, so after the last step the ranks differ until this is called."""
    if not info.enabled:
        return
    for b in module.buffers():
        dist.broadcast(b.data, 0)
