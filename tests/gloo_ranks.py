"""Run a function on N gloo ranks of torch.distributed, spawned by torch.multiprocessing (CPU tests)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank: int, world: int, folder: str, fn: Callable, args: tuple) -> None:
    torch.set_num_threads(1)  # N ranks share the test machine's cores
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        result = fn(*args)
        torch.save(result, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, world: int, folder: Path, *args) -> list:
    """fn(*args) on each of `world` ranks of a gloo process group; the list of what each rank returned."""
    folder.mkdir(parents=True, exist_ok=True)
    mp.spawn(_rank, args=(world, str(folder), fn, args), nprocs=world, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world)]
