"""The second pass: received_j = sum_i p_ij, the attention each key receives, and the block statistics
block_mass / block_max (`workbench.kernels.contract`, `workbench.kernels.triton_blocks`).

Like the dK pass of a flash-attention backward, one program holds BLOCK_N keys of one (batch, query head) and
walks the query blocks that may see them, recomputing p_ij = exp2((u_ij - m_i) - log2 l_i) from q, k and the
forward's row max m and log2 l (base 2, see `workbench.kernels.triton_forward`): nothing of size queries x keys is
stored. Query blocks whose rows all see every key of the block skip the mask. Rows that see no key (m = NaN:
padding queries) add nothing. Under the VAR redistribution edit (REDIST) each p_ij is multiplied by its row's
keep (source keys) or boost (target keys) factor, which the forward stores (`workbench.kernels.triton_redistribution`).
The p of each query block are added into a [BLOCK_M, BLOCK_N] tile in registers and summed over the rows once,
after the loop: a sum over rows inside the loop crosses warps (shared memory and a barrier per block).
"""

from __future__ import annotations

import triton
import triton.language as tl

from workbench.kernels.triton_blocks import add_block_stats, kept_keys, tile_kept
from workbench.kernels.triton_forward import load_block
from workbench.kernels.triton_logits import edited_logits, logit_scales, visible, whole_query_blocks
from workbench.kernels.triton_redistribution import key_set, target_set


@triton.jit
def received_pass(
    Q, K, DescQ, DescK, KeyValid, Start, Temperature, KeyBias, BiasKeys, RowMax, RowLog2Sum, Received,
    SourceKeys, TargetKeys, RowKeep, RowBoost, BlockMass, BlockMax, BlockKeep,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    n_heads, group, lq, lk, scale, softcap, window, block_size, n_qb, n_kb, keep_size, keep_nq, keep_nk, keep_batches,
    tune_lq, tune_lk,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, PADDED: tl.constexpr,
    TEMPERATURE: tl.constexpr, N_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    REDIST: tl.constexpr, N_SOURCE: tl.constexpr, N_TARGET: tl.constexpr, REST_TARGETS: tl.constexpr,
    TMA: tl.constexpr,
    RECEIVED: tl.constexpr, BLOCK_MASS: tl.constexpr, BLOCK_MAX: tl.constexpr, BLOCK_KEEP: tl.constexpr,
):
    """received [keys] of one block of BLOCK_N keys of one (batch, query head), and its share of the block
    statistics (each of RECEIVED, BLOCK_MASS, BLOCK_MAX asks for one).

    Grid: (key blocks, batch x query heads). tune_lq / tune_lk are the autotuner's key, unused here.
    """
    pid_n, bh = tl.program_id(0), tl.program_id(1)
    b, head = bh // n_heads, bh % n_heads
    kv_head = head // group
    offset = lk - lq  # query row r sits at key position r + offset
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    start = tl.load(Start + b)
    rel_k = offs_n - start
    k_tile = load_block(DescK, b, kv_head, n0, K + b * stride_kb + kv_head * stride_kh, offs_n, stride_kn, offs_d,
                        lk, HEAD_DIM, BLOCK_N, BLOCK_D, TMA)
    key_ok = offs_n < lk
    if PADDED:
        key_ok &= tl.load(KeyValid + b * lk + offs_n, mask=key_ok, other=0) != 0
    pre, post = logit_scales(scale, softcap, Temperature, head, SOFTCAP, TEMPERATURE)
    q_tile_base = Q + b * stride_qb + head * stride_qh
    row_max = RowMax + bh * lq
    row_log2sum = RowLog2Sum + bh * lq

    lo = 0
    hi = lq
    if CAUSAL:
        lo = tl.maximum(0, n0 - offset)
    elif WINDOW:
        lo = tl.maximum(0, n0 - offset - window + 1)
    if WINDOW:
        hi = tl.minimum(lq, n0 + BLOCK_N - offset + window - 1)
    lo = (lo // BLOCK_M) * BLOCK_M
    full_lo, full_hi = whole_query_blocks(n0, n0 + BLOCK_N - 1, lq, offset, window, BLOCK_M, CAUSAL, WINDOW, PADDED)

    if REDIST:
        is_source = key_set(offs_n, n0, start, SourceKeys, N_SOURCE, BLOCK_N)[0]
        is_target = target_set(offs_n, n0, start, TargetKeys, is_source, N_TARGET, BLOCK_N, REST_TARGETS)[0]
    total = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)  # summed over rows once, after the loop
    for m0 in range(lo, hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        live = True  # a Python constant unless the block-sparse edit may drop the whole tile
        if BLOCK_KEEP:  # a dropped tile adds nothing
            keep_ptr = BlockKeep + (head * keep_batches + b % keep_batches) * keep_nq * keep_nk
            kept = tile_kept(keep_ptr, m0, n0, tl.maximum(start - offset, 0), start, keep_size, keep_nq, keep_nk,
                             BLOCK_M, BLOCK_N)
            live = kept != 0
        if live:
            q_tile = load_block(DescQ, b, head, m0, q_tile_base, offs_m, stride_qm, offs_d, lq, HEAD_DIM, BLOCK_M,
                                BLOCK_D, TMA)
            qk = tl.dot(q_tile, tl.trans(k_tile), input_precision=PRECISION)
            u = edited_logits(qk, rel_k, pre, post, head, KeyBias, BiasKeys, SOFTCAP, N_BIAS)
            m = tl.load(row_max + offs_m, mask=offs_m < lq, other=float("nan"))
            log2_l = tl.load(row_log2sum + offs_m, mask=offs_m < lq, other=0.0)
            if (m0 < full_lo) | (m0 >= full_hi):  # on the diagonal, the window's edges or the queries' end
                row_ok = m == m  # NaN: beyond the queries, or a row that sees no key
                seen = visible(offs_m + offset, offs_n, row_ok, lk, window, CAUSAL, WINDOW) & key_ok[None, :]
                p = tl.where(seen, tl.exp2((u - tl.where(row_ok, m, 0.0)[:, None]) - log2_l[:, None]), 0.0)
            else:
                p = tl.exp2((u - m[:, None]) - log2_l[:, None])
            if BLOCK_KEEP:  # a tile over blocks of the mask that differ: its dropped keys hold no mass
                if kept == 2:
                    p = tl.where(kept_keys(keep_ptr, offs_m, offs_n, tl.maximum(start - offset, 0), start, keep_size,
                                           keep_nq, keep_nk), p, 0.0)
            if REDIST:
                keep = tl.load(RowKeep + bh * lq + offs_m, mask=offs_m < lq, other=1.0)
                boost = tl.load(RowBoost + bh * lq + offs_m, mask=offs_m < lq, other=1.0)
                p *= tl.where(is_source[None, :], keep[:, None], tl.where(is_target[None, :], boost[:, None], 1.0))
            total += p
            if BLOCK_MASS or BLOCK_MAX:
                add_block_stats(p, offs_m, offs_n, m0, n0, lq, lk, tl.maximum(start - offset, 0), start, block_size,
                                n_qb, n_kb, bh, BlockMass, BlockMax, BLOCK_M, BLOCK_N, BLOCK_MASS, BLOCK_MAX)
    if RECEIVED:
        tl.store(Received + bh * lk + offs_n, tl.sum(total, 0), mask=offs_n < lk)
