"""Attention that returns its output and per-head statistics in the same pass.

`attention(...)` runs the fused Triton kernels (`workbench.kernels.triton_attention`) on CUDA tensors, the CPU path
(`workbench.kernels.cpu`) on CPU tensors, and the chunked PyTorch reference (`workbench.kernels.reference`) when
asked; all follow `workbench.kernels.contract`. Calls that need only the output run the fastest attention on the
device (`workbench.kernels.fastest`). This package imports only torch, triton, the CPU path's own compiled code
(and FlashAttention-4 where it is installed).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Sequence

import torch

from workbench.kernels import fastest, reference
from workbench.kernels.contract import (
    ALL_STATS,
    BLOCK_STATS,
    DEFAULT_BLOCK_SIZE,
    KEY_STATS,
    QUERY_STATS,
    HeadEdits,
    check_block_size,
    check_distance_cap,
    check_stats,
)

BACKENDS = ("auto", "reference", "triton", "cpu")

__all__ = ["ALL_STATS", "BACKENDS", "BLOCK_STATS", "DEFAULT_BLOCK_SIZE", "KEY_STATS", "QUERY_STATS", "HeadEdits",
           "attention", "attention_pattern", "check_block_size", "check_distance_cap", "check_stats", "resolve_backend"]


def resolve_backend(device: torch.device, backend: str = "auto") -> str:
    """The backend that runs on `device`: by default 'triton' on CUDA and 'cpu' on the CPU, else 'reference'.

    Asking for 'triton' on a non-CUDA device, or for 'cpu' on a non-CPU device or where its C row pass cannot be
    built (no C compiler), raises ValueError naming the reason; 'auto' then falls back to the reference with a
    warning.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; known: {list(BACKENDS)}")
    if backend == "triton" and device.type != "cuda":
        raise ValueError(f"the triton backend needs a CUDA device, got {device}")
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"the cpu backend needs a CPU device, got {device}")
        problem = _cpu_problem()
        if problem:
            raise ValueError(f"the cpu backend is not available: {problem}")
    if backend == "auto":
        if device.type == "cuda" and _triton_available():
            return "triton"
        if device.type == "cpu" and not _cpu_problem():
            return "cpu"
        return "reference"
    return backend


def _triton_available() -> bool:
    try:
        import workbench.kernels.triton_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _cpu_problem() -> str | None:
    """Why the CPU path's C row pass cannot be built or loaded here (warned once), or None when it can."""
    from workbench.kernels.cpu_build import BuildError, library

    try:
        library()
    except BuildError as err:
        warnings.warn(f"the fast CPU attention is unavailable, using the slower reference: {err}", stacklevel=3)
        return str(err)
    return None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    softcap: float | None = None,
    window: int | None = None,
    key_padding: torch.Tensor | None = None,
    stats: Sequence[str] = (),
    sink_keys: Sequence[int] = (0,),
    distance_cap: int | None = None,
    edits: HeadEdits | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    sinks: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Attention output [B, Hq, Lq, Dv] and the statistics named in `stats` (see `workbench.kernels.contract`).

    Arguments are those of `workbench.kernels.reference.attention`; `backend` picks 'triton', 'cpu', 'reference'
    or 'auto' (see `resolve_backend`). With 'auto', a call that needs no statistic and no edit runs the fastest
    attention on the device (`workbench.kernels.fastest`) where it can (not with learned `sinks`).
    """
    kwargs = dict(causal=causal, scale=scale, softcap=softcap, window=window, key_padding=key_padding,
                  stats=stats, sink_keys=sink_keys, distance_cap=distance_cap, edits=edits, block_size=block_size,
                  sinks=sinks)
    if backend == "auto" and not stats and (edits is None or edits.is_identity()) and sinks is None:
        with _on(q.device):
            out = fastest.plain_attention(q, k, v, causal=causal, scale=scale, softcap=softcap, window=window,
                                          key_padding=key_padding)
        if out is not None:
            return out, {}
    chosen = resolve_backend(q.device, backend)
    if chosen == "cpu" and backend == "auto" and torch.is_grad_enabled() and any(
            t.requires_grad for t in (q, k, v)):
        chosen = "reference"  # the CPU path computes no gradients; the reference is plain autograd PyTorch
    if chosen == "triton":
        from workbench.kernels import triton_attention

        with _on(q.device):
            return triton_attention.attention(q, k, v, **kwargs)
    if chosen == "cpu":
        from workbench.kernels import cpu

        return cpu.attention(q, k, v, **kwargs)
    return reference.attention(q, k, v, **kwargs)


def _on(device: torch.device) -> contextlib.AbstractContextManager:
    """Make `device` the current CUDA device while a kernel launches: Triton and FlashAttention-4 launch on the
    current device, and the layers of a model sharded by a device_map sit on several GPUs."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


attention_pattern = reference.attention_pattern
