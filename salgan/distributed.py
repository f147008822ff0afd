"""The few helpers that confine torch.distributed set-up (torchvision references' utils.py style)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is visible, else the CPU."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is visible")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def resolve_nproc(nproc: int | str, device: torch.device) -> int:
    """``auto``: one process per visible GPU, one on the CPU."""
    if nproc != "auto":
        return int(nproc)
    return torch.cuda.device_count() if device.type == "cuda" else 1


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPU); a lone process joins none."""
    device = resolve_device(device_preference)
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo(0, 1, 0, 1, device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, local_world, device)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (a no-op for one process)."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled between the group's own processes; a no-op alone)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class PeerFailed(RuntimeError):
    """Another rank failed; this one stops too instead of waiting in a collective until the timeout."""


def raise_if_any_failed(error: BaseException | None, what: str) -> None:
    """Every rank reports how ``what`` went; if any rank failed, every rank raises.

    Rank-local work (rank 0 writing the epoch's files, reading a checkpoint) is followed by this
    exchange instead of a barrier: a rank that failed still takes part, so the others learn of the
    failure now, with its message, rather than when the collective timeout (30 minutes) expires.
    """
    if not dist.is_initialized():
        if error is not None:
            raise error
        return
    reports: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(reports, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    for rank, report in enumerate(reports):
        if report is not None:
            raise PeerFailed(f"rank {rank} failed while {what}: {report}")


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
