"""The fastest plain attention on the device, for the calls that need only the output.

A traced model runs every attention call through `workbench.kernels.attention`; when a call asks for no
statistic and no edit (`stats=()`, layers that are not traced) it has no reason to run the workbench's own
kernel. On CUDA it then runs FlashAttention-4 (the CuTe DSL kernels of the `flash-attn-4` package) when that is
installed, else PyTorch's SDPA as a user would call it (cuDNN on Hopper). Both compute the
same softmax attention; calls with a sliding window, key padding, a softcap or a query block that does not end
at the last key keep the workbench kernel, which applies those without building a mask.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

FA4_HEAD_DIMS = (64, 128)  # the head sizes checked on the H200
FA4_DTYPES = (torch.bfloat16, torch.float16)


@functools.cache
def flash_attention_4():
    """FlashAttention-4's `flash_attn_func`, or None when flash-attn-4 is not installed."""
    try:
        from flash_attn.cute import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float | None,
                    softcap: float | None, window: int | None, key_padding: torch.Tensor | None) -> torch.Tensor | None:
    """out [B, Hq, Lq, D] of the fastest attention for a call without statistics or edits, or None when the
    call needs the workbench kernel (not CUDA, a window, padding, a softcap, causal with Lq != Lk)."""
    if q.device.type != "cuda" or window is not None or key_padding is not None or softcap is not None:
        return None
    if causal and q.shape[2] != k.shape[2]:  # SDPA's causal mask is aligned top-left, ours bottom-right
        return None
    fa4 = flash_attention_4()
    if fa4 is not None and q.dtype in FA4_DTYPES and q.shape[-1] in FA4_HEAD_DIMS:
        out = fa4(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale, causal=causal)
        return (out[0] if isinstance(out, tuple) else out).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
