"""What the forward and the `received` kernels share: edited logits in base-2 units, which keys a row sees,
and which keys a block of rows sees whole (no mask needed).

The kernels work with u = log2(e) * s rather than the natural logits s of `workbench.kernels.contract`, so that
exp(s - m) = exp2(u - m) is one ex2 instruction, and the logit scale, softcap, temperature and log2(e) fold
into two per-head constants:

    u = post * qk                    post = log2(e) * scale / T
    u = post * tanh(pre * qk)        pre = scale / c,  post = log2(e) * c / T   (softcap c)

then u += log2(e) * key_bias on the biased keys. Masked logits are MASKED, a large finite negative number
rather than -inf, so that p * u and (m_old - m_new) * l never meet inf * 0.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
MASKED = tl.constexpr(-1.0e30)


@triton.jit
def logit_scales(scale, softcap, temperature_ptr, head, SOFTCAP: tl.constexpr, TEMPERATURE: tl.constexpr):
    """(pre, post) of the head, as in the module docstring (pre is unused without a softcap)."""
    if SOFTCAP:
        post = softcap * LOG2E
    else:
        post = scale * LOG2E
    if TEMPERATURE:
        post = post / tl.load(temperature_ptr + head)
    return scale / softcap, post


@triton.jit
def edited_logits(qk, rel_k, pre, post, head, key_bias_ptr, bias_keys_ptr, SOFTCAP: tl.constexpr, N_BIAS: tl.constexpr):
    """Base-2 logits u [rows, keys] from the scores qk = q k^T [rows, keys] of a query tile and a key tile.

    rel_k [keys]: key positions counted from the first real key (where `bias_keys` point).
    """
    if SOFTCAP:
        x = pre * qk
        e = tl.exp2(tl.abs(x) * (-2.0 * LOG2E))  # tanh(|x|) = (1 - e) / (1 + e), stable for large |x|
        u = post * tl.where(x >= 0, 1.0, -1.0) * (1.0 - e) / (1.0 + e)
    else:
        u = post * qk
    for n in tl.static_range(N_BIAS):
        bias = tl.load(key_bias_ptr + head * N_BIAS + n) * LOG2E
        u += tl.where(rel_k[None, :] == tl.load(bias_keys_ptr + n), bias, 0.0)
    return u


@triton.jit
def visible(q_abs, offs_n, row_ok, lk, window, CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    """[rows, keys] bool: row (at key position q_abs) may see key offs_n. row_ok [rows]: the row is real."""
    diff = q_abs[:, None] - offs_n[None, :]
    seen = row_ok[:, None] & (offs_n[None, :] < lk)
    if CAUSAL:
        seen &= diff >= 0
    if WINDOW:
        seen &= tl.abs(diff) < window
    return seen


@triton.jit
def whole_key_blocks(q_first, q_last, lk, window, BLOCK_N: tl.constexpr,
                     CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PADDED: tl.constexpr):
    """[full_lo, full_hi), multiples of BLOCK_N: the keys that the rows at key positions q_first..q_last all
    see, so that a key block inside needs no mask. Empty when any key may be padding."""
    first = 0
    last = lk  # exclusive
    if WINDOW:
        first = tl.maximum(first, q_last - window + 1)
        last = tl.minimum(last, q_first + window)
    if CAUSAL:
        last = tl.minimum(last, q_first + 1)
    if PADDED:
        last = 0
    return tl.cdiv(first, BLOCK_N) * BLOCK_N, (last // BLOCK_N) * BLOCK_N


@triton.jit
def whole_query_blocks(k_first, k_last, lq, offset, window, BLOCK_M: tl.constexpr,
                       CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PADDED: tl.constexpr):
    """[full_lo, full_hi), multiples of BLOCK_M: the query rows (row r at key position r + offset) that all
    see every key k_first..k_last, so that a query block inside needs no mask. Empty with key padding."""
    first = 0
    last = lq  # exclusive
    if CAUSAL:
        first = tl.maximum(first, k_last - offset)
    if WINDOW:
        last = tl.minimum(last, k_first + window - offset)
        if not CAUSAL:
            first = tl.maximum(first, k_last - window + 1 - offset)
    if PADDED:
        last = 0
    return tl.cdiv(first, BLOCK_M) * BLOCK_M, (tl.maximum(last, 0) // BLOCK_M) * BLOCK_M
