"""torchrun's environment for epoch jobs: ranks, the device of each, and the few collectives
the job needs around the loop (loss means, rank 0's weights, failing together)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from trainer_image.jobs.session import resolve_device


class RankFailed(RuntimeError):
    """Another rank of a torchrun job failed; this one stops too."""


class Distributed:
    """torchrun's environment, or a single process; every collective is a no-op on one."""

    def __init__(self, device: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device)
        if self.world > 1:
            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, values: Mapping[str, float]) -> dict[str, float]:
        """Each value averaged over the ranks (every rank ran the same number of steps)."""
        if not self.active:
            return dict(values)
        names = sorted(values)
        tensor = torch.tensor([values[n] for n in names], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return dict(zip(names, (tensor / self.world).tolist(), strict=True))

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.active:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def check(self, error: BaseException | None) -> None:
        """Raise on every rank if any rank failed, so no rank waits forever in a collective
        for one that has gone (rank 0's controller calls can fail where the others cannot)."""
        if not self.active:
            if error is not None:
                raise error
            return
        messages: list[str | None] = [None] * self.world
        mine = None if error is None else f"{type(error).__name__}: {error}"
        torch.distributed.all_gather_object(messages, mine)
        if error is not None:
            raise error
        failed = [(rank, m) for rank, m in enumerate(messages) if m is not None]
        if failed:
            rank, message = failed[0]
            raise RankFailed(f"rank {rank} failed: {message}")

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
