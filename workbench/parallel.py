"""Data parallelism for sweeps: work items split across the processes of `accelerate launch` or `torchrun`.

Each process takes a contiguous share of the items (accelerate's `PartialState.split_between_processes`), and
the shares come back to every process in process order (`accelerate.utils.gather_object`), so a sweep's result
is the one-process result, item for item. In one process (no launcher) every call is the identity; the main
process (rank 0) alone writes reports and store runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

T = TypeVar("T")
R = TypeVar("R")


@functools.cache
def _state() -> PartialState:
    """accelerate's view of the launch (on a machine without CUDA, its CPU processes: gloo)."""
    return PartialState(cpu=not torch.cuda.is_available())


def processes() -> int:
    """How many processes share the work (1 without a launcher)."""
    return _state().num_processes


def is_main() -> bool:
    """True in the process that writes the results (rank 0; the only one without a launcher)."""
    return _state().is_main_process


def device() -> str:
    """This process's device: its own GPU under a launcher on a GPU machine, else accelerate's default."""
    return str(_state().device)


def share(items: Sequence[T]) -> list[T]:
    """This process's contiguous share of `items` (all of them in one process; shares differ by at most one)."""
    with _state().split_between_processes(list(items)) as mine:
        return list(mine)


def gather(mine: list[T]) -> list[T]:
    """Every process's `mine`, concatenated in process order, on every process (`mine` itself in one process)."""
    if processes() == 1:
        return list(mine)
    return gather_object(list(mine))


def wait() -> None:
    """Wait until every process gets here (a no-op in one process)."""
    _state().wait_for_everyone()


def map_items(fn: Callable[[T], R], items: Sequence[T], desc: str, unit: str) -> list[R]:
    """[fn(item) for item in items], each process running its share (with a progress bar `desc`, in `unit`s),
    the results in item order on every process."""
    return gather([fn(item) for item in tqdm(share(items), desc=desc, unit=unit)])
