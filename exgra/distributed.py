"""Which process this is: the one distributed-state helper of the commands that shard work.

``accelerate launch`` and ``torchrun`` set ``WORLD_SIZE``; without a GPU the processes talk over gloo
(accelerate's MULTI_CPU), so the same command shards on a CPU machine too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from exgra.errors import ExgraError

__all__ = ["distributed_state", "end_distributed", "launched_world_size", "use_cpu_processes"]


def launched_world_size() -> int:
    """How many processes the launcher started (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def use_cpu_processes() -> bool:
    """Several processes on a machine without GPUs: accelerate must be told ``cpu=True``, or every
    process runs alone (accelerate 1.15)."""
    import torch

    return not torch.cuda.is_available() and launched_world_size() > 1


def distributed_state() -> tuple[int, int, Callable[[], None], Any]:
    """(rank, world size, barrier, device) from accelerate when launched with it; one process otherwise."""
    world = launched_world_size()
    if world <= 1:
        return 0, 1, lambda: None, None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != world:
        raise ExgraError(
            f"WORLD_SIZE is {world} but accelerate set up {state.num_processes} process(es); "
            "launch with `accelerate launch -m exgra ...` or `torchrun ... -m exgra ...`"
        )
    return state.process_index, state.num_processes, state.wait_for_everyone, state.device


def end_distributed(world: int, created: bool) -> None:
    """Tear down a process group this run created (a group left open can abort the interpreter's exit)."""
    import torch.distributed as dist

    if world > 1 and created and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
