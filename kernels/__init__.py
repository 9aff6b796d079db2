"""Attention that returns its output and per-head statistics in the same pass.

`attention(...)` runs the fused Triton kernels (`workbench.kernels.triton_attention`) on CUDA tensors and the
chunked PyTorch reference (`workbench.kernels.reference`) elsewhere; both follow `workbench.kernels.contract`.
Calls that need only the output run the fastest attention on the device (`workbench.kernels.fastest`). This
package imports only torch and triton (and FlashAttention-4 where it is installed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workbench.kernels import fastest, reference
from workbench.kernels.contract import ALL_STATS, KEY_STATS, QUERY_STATS, HeadEdits, check_stats

BACKENDS = ("auto", "reference", "triton")

__all__ = ["ALL_STATS", "BACKENDS", "KEY_STATS", "QUERY_STATS", "HeadEdits", "attention", "attention_pattern",
           "check_stats", "resolve_backend"]


def resolve_backend(device: torch.device, backend: str = "auto") -> str:
    """The backend that runs on `device`: 'triton' on CUDA when asked or by default, else 'reference'.

    Asking for 'triton' on a non-CUDA device raises ValueError naming the device.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; known: {list(BACKENDS)}")
    if backend == "triton" and device.type != "cuda":
        raise ValueError(f"the triton backend needs a CUDA device, got {device}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and _triton_available() else "reference"
    return backend


def _triton_available() -> bool:
    try:
        import workbench.kernels.triton_attention  # noqa: F401
    except ImportError:
        return False
    return True


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
    backend: str = "auto",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Attention output [B, Hq, Lq, Dv] and the statistics named in `stats` (see `workbench.kernels.contract`).

    Arguments are those of `workbench.kernels.reference.attention`; `backend` picks 'triton', 'reference' or
    'auto'. With 'auto', a call that needs no statistic and no edit runs the fastest attention on the device
    (`workbench.kernels.fastest`) where it can.
    """
    kwargs = dict(causal=causal, scale=scale, softcap=softcap, window=window, key_padding=key_padding,
                  stats=stats, sink_keys=sink_keys, distance_cap=distance_cap, edits=edits)
    if backend == "auto" and not stats and (edits is None or edits.is_identity()):
        out = fastest.plain_attention(q, k, v, causal=causal, scale=scale, softcap=softcap, window=window,
                                      key_padding=key_padding)
        if out is not None:
            return out, {}
    if resolve_backend(q.device, backend) == "triton":
        from workbench.kernels import triton_attention

        return triton_attention.attention(q, k, v, **kwargs)
    return reference.attention(q, k, v, **kwargs)


attention_pattern = reference.attention_pattern
