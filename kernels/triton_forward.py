"""Fused flash-style attention forward that also computes the per-query statistics of `workbench.kernels.contract`.

One program handles BLOCK_M query rows of one (batch, query head) and walks the key blocks those rows may see
(causal: up to the diagonal; sliding window: from the window's first key; left padding: from the first real
key). Blocks that every row sees whole skip the mask; only the blocks on the diagonal, on the window's
edges and at the end of the keys are masked (with key padding, every block is). On Hopper the tiles arrive
through tensor descriptors (TMA, the bulk tensor copy engine: no address arithmetic in the loop, zeros beyond
the tensor); elsewhere through pointer loads. With plain scaled logits (FOLD: no softcap, bias or temperature)
the whole blocks take the row maximum on q.k and scale it, so each score costs one multiply-add before exp2.

The online-softmax recurrence, per row, over key blocks, in base-2 logits u (see `workbench.kernels.triton_logits`),
with x_j = u_j - m' and p_j = exp2(x_j):

    m'   = max(m, max_j u_j)              alpha = exp2(m - m')
    l'   = alpha l + sum_j p_j            acc'  = alpha acc + sum_j p_j v_j
    t'   = alpha (t + (m - m') l) + sum_j p_j x_j
    z'   = alpha z + sum_{j sink} p_j     w'    = alpha w + sum_j p_j d_ij,  d_ij = min(|i - j|, cap)

t is sum_j p_j (u_j - m) kept for the current m: when m grows to m', every old term gains (m - m') and is
rescaled by alpha. At the end (ln 2 converts base-2 to nats):

    lse = ln2 (m + log2 l)     entropy = ln2 (log2 l - t / l)     max_prob = 1 / l
    sink_mass = z / l          window_distance = w / l            out = acc / l

A learned sink logit (SINK_LOGIT, base 2: u_s) joins the denominator after the key loop, as a stable log-add
that leaves m (the keys' maximum) and every running sum as they are, so nothing is rescaled and nothing
overflows: log2 L = log2(l + exp2(u_s - m)), and with the keys' share P = l / L of the row

    lse = ln2 logaddexp2(m + log2 l, u_s)     entropy = ln2 (P log2 L - t / L)
    learned_sink_mass = exp2(u_s - m - log2 L)

with L in place of l in every other ratio (lse is added up from m + log2 l and u_s, not m + log2 L, which would
lose u_s's precision in m when the sink dominates a row whose keys have very low logits). The stored row
normaliser is log2 L, so the received pass is unchanged.
Both terms of the entropy are >= 0 (l >= 1, t <= 0), so the one-pass entropy does not cancel even when p is
peaked; argmax_key is the first key at the running maximum. The state starts at m = MASKED, l = t = 0: a
block whose keys a row cannot see gives that row p = 1 on each of them, and the first visible key wipes it
(alpha = 0). The VAR redistribution edit (REDIST) keeps more running sums, see
`workbench.kernels.triton_redistribution`.
For the `received` pass the row's m and log2 l are stored apart (RowMax, RowLog2Sum): there
p = exp2((u - m) - log2 l) keeps full precision even where |lse| is large (a key bias of -1e4 on the only
key a row sees).
"""

from __future__ import annotations

import triton
import triton.language as tl

from workbench.kernels.triton_blocks import kept_keys, tile_kept
from workbench.kernels.triton_logits import LN2, LOG2E, MASKED, edited_logits, logit_scales, visible, whole_key_blocks
from workbench.kernels.triton_redistribution import (
    edited_entropy_bits,
    edited_max,
    factors,
    key_set,
    target_set,
    update_max,
    update_set,
)


@triton.jit
def load_rows(base, offs, stride, offs_d, n_rows, HEAD_DIM: tl.constexpr):
    """The tile [rows, BLOCK_D] of rows `offs` from base (row stride `stride`), zero beyond n_rows and HEAD_DIM."""
    ptrs = base + offs[:, None] * stride + offs_d[None, :]
    return tl.load(ptrs, mask=(offs[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)


@triton.jit
def load_block(desc, b, head, row0, base, offs, stride, offs_d, n_rows,
               HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, TMA: tl.constexpr):
    """The tile [ROWS, BLOCK_D] of rows row0.. (= offs) of one (batch, head): through the tensor descriptor
    `desc` (a bulk tensor copy on Hopper, zero beyond the tensor) when TMA, else as `load_rows`."""
    if TMA:
        return desc.load([b, head, row0, 0]).reshape(ROWS, BLOCK_D)
    else:
        return load_rows(base, offs, stride, offs_d, n_rows, HEAD_DIM)


@triton.jit
def distance_tile(p, q_abs, n0, distance_cap, BLOCK_N: tl.constexpr, CAP: tl.constexpr):
    """sum_j p_ij min(|i - j|, cap) [rows] over the key block n0.. from the tile of distances."""
    dist = tl.abs(q_abs[:, None] - (n0 + tl.arange(0, BLOCK_N))[None, :]).to(tl.float32)
    if CAP:
        dist = tl.minimum(dist, distance_cap)
    return tl.sum(p * dist, 1)


@triton.jit
def block_distance(p, row_sum, q_abs, n0, q_first, q_last, distance_cap,
                   BLOCK_N: tl.constexpr, CAP: tl.constexpr, BELOW: tl.constexpr):
    """sum_j p_ij min(|i - j|, cap) [rows] over the key block n0.. (row_sum = sum_j p_ij).

    A block at least the cap away from every row adds cap * row_sum. BELOW: every key of the block precedes
    every row (a whole block under a causal mask); where the block is also within the cap of every row,
    |i - j| = (i - n0) - c is linear in the column c, so the sum is (i - n0) row_sum - sum_c p_ic c: one
    multiply-add per score instead of a tile of distances.
    """
    if CAP:
        limit = distance_cap
    else:
        limit = 1.0e30
    if (q_first - (n0 + BLOCK_N - 1) >= limit) | (n0 - q_last >= limit):
        w = limit * row_sum
    elif BELOW:
        if q_last - n0 < limit:
            cols = tl.arange(0, BLOCK_N).to(tl.float32)
            w = (q_abs - n0).to(tl.float32) * row_sum - tl.sum(p * cols[None, :], 1)
        else:
            w = distance_tile(p, q_abs, n0, distance_cap, BLOCK_N, CAP)
    else:
        w = distance_tile(p, q_abs, n0, distance_cap, BLOCK_N, CAP)
    return w


@triton.jit
def stats_forward(
    Q, K, V, DescQ, DescK, DescV, Out, KeyValid, Start, SinkKeys, Temperature, KeyBias, BiasKeys, Gate, Mix,
    Redistribute, SourceKeys, TargetKeys,
    Lse, Entropy, SinkMass, MaxProb, ArgmaxKey, WindowDistance, SelfMass, RowMax, RowLog2Sum, RowKeep, RowBoost,
    SinkLogit, LearnedSinkMass, BlockKeep,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    n_heads, group, lq, lk, scale, softcap, window, distance_cap, keep_size, keep_nq, keep_nk, keep_batches,
    tune_lq, tune_lk,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, PADDED: tl.constexpr,
    TEMPERATURE: tl.constexpr, N_BIAS: tl.constexpr, GATE: tl.constexpr, MIX: tl.constexpr,
    REDIST: tl.constexpr, N_SOURCE: tl.constexpr, N_TARGET: tl.constexpr, REST_TARGETS: tl.constexpr,
    N_SINK: tl.constexpr, LSE: tl.constexpr, NORM: tl.constexpr, ENTROPY: tl.constexpr, SINK: tl.constexpr,
    MAX: tl.constexpr, DISTANCE: tl.constexpr, SELF: tl.constexpr, CAP: tl.constexpr, PRECISION: tl.constexpr,
    TMA: tl.constexpr, FOLD: tl.constexpr, SINK_LOGIT: tl.constexpr, LEARNED_MASS: tl.constexpr,
    BLOCK_KEEP: tl.constexpr,
):
    """Output rows and query statistics of one block of BLOCK_M query rows of one (batch, query head).

    Grid: (query blocks, batch x query heads); the last query blocks (the longest rows under a causal mask)
    start first. tune_lq / tune_lk are the autotuner's key (lengths rounded up to powers of two), unused here.
    """
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b, head = bh // n_heads, bh % n_heads
    kv_head = head // group
    offset = lk - lq  # query row r sits at key position r + offset
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_abs = offs_m + offset
    q_first = pid_m * BLOCK_M + offset
    q_last = q_first + BLOCK_M - 1
    start = tl.load(Start + b)
    in_range = offs_m < lq
    key_valid_row = KeyValid + b * lk
    row_ok = in_range
    if PADDED:  # a padding query sees no key
        row_ok &= tl.load(key_valid_row + q_abs, mask=in_range, other=0) != 0

    q_tile = load_block(DescQ, b, head, pid_m * BLOCK_M, Q + b * stride_qb + head * stride_qh, offs_m, stride_qm,
                        offs_d, lq, HEAD_DIM, BLOCK_M, BLOCK_D, TMA)
    k_tile_base = K + b * stride_kb + kv_head * stride_kh
    v_tile_base = V + b * stride_vb + kv_head * stride_vh
    pre, post = logit_scales(scale, softcap, Temperature, head, SOFTCAP, TEMPERATURE)

    lo = 0
    hi = lk
    if CAUSAL:
        hi = tl.minimum(lk, q_last + 1)
    elif WINDOW:
        hi = tl.minimum(lk, q_last + window)
    if WINDOW:
        lo = tl.maximum(0, q_first - window + 1)
    if PADDED:
        lo = tl.maximum(lo, start)
    lo = (lo // BLOCK_N) * BLOCK_N
    full_lo, full_hi = whole_key_blocks(q_first, q_last, lk, window, BLOCK_N, CAUSAL, WINDOW, PADDED)

    m_i = tl.full([BLOCK_M], MASKED, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    t_i = tl.zeros([BLOCK_M], tl.float32)
    z_i = tl.zeros([BLOCK_M], tl.float32)
    w_i = tl.zeros([BLOCK_M], tl.float32)
    d_i = tl.zeros([BLOCK_M], tl.float32)  # the row's weight on its own key position (self_mass)
    arg_i = tl.full([BLOCK_M], -1, tl.int32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if REDIST:  # running sums over the source (_s) and target (_t) keys; m_r, arg_r: the other keys' maximum
        z_s, t_s, w_s, k_s = l_i, t_i, w_i, z_i
        z_t, t_t, w_t, k_t = l_i, t_i, w_i, z_i
        acc_s, acc_t = acc, acc
        m_r, m_s, m_t = m_i, m_i, m_i
        arg_r, arg_s, arg_t = arg_i, arg_i, arg_i
    # Three loops over key blocks, in key order: the masked blocks below the ones every row sees whole, those
    # (no mask: the compiler pipelines a loop without a branch in its body), and the masked ones above them.
    whole_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    whole_hi = tl.minimum(tl.maximum(full_hi, whole_lo), hi)
    for seg in tl.static_range(3):
        if seg == 0:
            seg_lo, seg_hi = lo, whole_lo
        elif seg == 1:
            seg_lo, seg_hi = whole_lo, whole_hi
        else:
            seg_lo, seg_hi = whole_hi, hi
        for n0 in range(seg_lo, seg_hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            live = True  # a Python constant unless the block-sparse edit may drop the whole tile
            if BLOCK_KEEP:  # a dropped tile is skipped
                keep_ptr = BlockKeep + (head * keep_batches + b % keep_batches) * keep_nq * keep_nk
                kept = tile_kept(keep_ptr, pid_m * BLOCK_M, n0, tl.maximum(start - offset, 0), start, keep_size,
                                 keep_nq, keep_nk, BLOCK_M, BLOCK_N)
                live = kept != 0
            if live:
                rel_k = offs_n - start
                k_tile = load_block(DescK, b, kv_head, n0, k_tile_base, offs_n, stride_kn, offs_d, lk, HEAD_DIM,
                                    BLOCK_N, BLOCK_D, TMA)
                qk = tl.dot(q_tile, tl.trans(k_tile), input_precision=PRECISION)
                if FOLD and seg == 1:  # plain scaled logits on whole blocks: max on q.k, then one FMA per score
                    if MAX:  # the row maximum and its first position in one reduction (post > 0 keeps the order)
                        qk_max, block_arg = tl.max(qk, 1, return_indices=True, return_indices_tie_break_left=True)
                    else:
                        qk_max = tl.max(qk, 1)
                    block_max = qk_max * post
                    m_new = tl.maximum(m_i, block_max)
                    x = qk * post - m_new[:, None]
                else:
                    u = edited_logits(qk, rel_k, pre, post, head, KeyBias, BiasKeys, SOFTCAP, N_BIAS)
                    if seg != 1:  # on the window's lower edge, the diagonal or the keys' end
                        seen = visible(q_abs, offs_n, row_ok, lk, window, CAUSAL, WINDOW)
                        if PADDED:
                            seen &= tl.load(key_valid_row + offs_n, mask=offs_n < lk, other=0)[None, :] != 0
                        u = tl.where(seen, u, MASKED)
                    if BLOCK_KEEP:  # (never FOLD) a tile over blocks of the mask that differ: its dropped keys
                        if kept == 2:
                            u = tl.where(kept_keys(keep_ptr, offs_m, offs_n, tl.maximum(start - offset, 0), start,
                                                   keep_size, keep_nq, keep_nk), u, MASKED)
                    if MAX:  # the row maximum and its first position in one reduction
                        block_max, block_arg = tl.max(u, 1, return_indices=True, return_indices_tie_break_left=True)
                    else:
                        block_max = tl.max(u, 1)
                    m_new = tl.maximum(m_i, block_max)
                    x = u - m_new[:, None]
                alpha = tl.exp2(m_i - m_new)
                p = tl.exp2(x)
                row_sum = tl.sum(p, 1)
                if ENTROPY:
                    t_i = alpha * (t_i + (m_i - m_new) * l_i) + tl.sum(p * x, 1)
                if MAX:
                    arg_i = tl.where(block_max > m_i, n0 + block_arg, arg_i)
                if SINK:
                    z_i = z_i * alpha
                    is_sink, block_has_sink = key_set(offs_n, n0, start, SinkKeys, N_SINK, BLOCK_N)
                    if block_has_sink:  # most blocks hold no sink key
                        z_i += tl.sum(tl.where(is_sink[None, :], p, 0.0), 1)
                if DISTANCE:
                    w_i = w_i * alpha + block_distance(p, row_sum, q_abs, n0, q_first, q_last, distance_cap, BLOCK_N,
                                                       CAP, CAUSAL and seg == 1)
                if SELF:
                    d_i = d_i * alpha
                    if (n0 <= q_last) & (n0 + BLOCK_N > q_first):  # the block holds some row's own key
                        d_i += tl.sum(tl.where(offs_n[None, :] == q_abs[:, None], p, 0.0), 1)
                v_tile = load_block(DescV, b, kv_head, n0, v_tile_base, offs_n, stride_vn, offs_d, lk, HEAD_DIM,
                                    BLOCK_N, BLOCK_D, TMA)
                if REDIST:
                    is_s, block_has_s = key_set(offs_n, n0, start, SourceKeys, N_SOURCE, BLOCK_N)
                    is_t, block_has_t = target_set(offs_n, n0, start, TargetKeys, is_s, N_TARGET, BLOCK_N,
                                                   REST_TARGETS)
                    if not SINK:
                        is_sink = is_s
                    dist = 0.0
                    if DISTANCE:
                        dist = tl.abs(q_abs[:, None] - offs_n[None, :]).to(tl.float32)
                        if CAP:
                            dist = tl.minimum(dist, distance_cap)
                    shift = m_i - m_new
                    z_s, t_s, w_s, k_s = update_set(z_s, t_s, w_s, k_s, p, x, dist, shift, alpha, is_s, block_has_s,
                                                    is_sink, ENTROPY, SINK, DISTANCE)
                    z_t, t_t, w_t, k_t = update_set(z_t, t_t, w_t, k_t, p, x, dist, shift, alpha, is_t, block_has_t,
                                                    is_sink, ENTROPY, SINK, DISTANCE)
                    acc_s *= alpha[:, None]
                    if block_has_s:
                        acc_s += tl.dot(tl.where(is_s[None, :], p, 0.0).to(v_tile.dtype), v_tile,
                                        input_precision=PRECISION)
                    acc_t *= alpha[:, None]
                    if block_has_t:
                        acc_t += tl.dot(tl.where(is_t[None, :], p, 0.0).to(v_tile.dtype), v_tile,
                                        input_precision=PRECISION)
                    if MAX:
                        m_r, arg_r = update_max(m_r, arg_r, u, ~(is_s | is_t), offs_n, lk)
                        if block_has_s:
                            m_s, arg_s = update_max(m_s, arg_s, u, is_s, offs_n, lk)
                        if block_has_t:
                            m_t, arg_t = update_max(m_t, arg_t, u, is_t, offs_n, lk)
                l_i = alpha * l_i + row_sum
                acc = tl.dot(p.to(v_tile.dtype), v_tile, acc * alpha[:, None], input_precision=PRECISION)
                m_i = m_new

    seen_any = m_i > MASKED / 2
    l_safe = tl.where(seen_any, l_i, 1.0)
    log2_l = tl.log2(l_safe)
    lse2 = m_i + log2_l  # the row's log2 normaliser
    share = 1.0  # the keys' share of the row: 1 - learned_sink_mass
    if SINK_LOGIT:  # the learned sink joins the denominator (module docstring)
        sink2 = tl.load(SinkLogit + head) * LOG2E
        lse2 = tl.maximum(lse2, sink2) + tl.log2(1.0 + tl.exp2(-tl.abs(lse2 - sink2)))
        sink_u = sink2 - tl.where(seen_any, m_i, 0.0)
        log2_total = tl.maximum(log2_l, sink_u) + tl.log2(1.0 + tl.exp2(-tl.abs(log2_l - sink_u)))
        share = tl.exp2(log2_l - log2_total)
        sink_share = tl.exp2(sink_u - log2_total)
        log2_l = log2_total
        l_safe = tl.exp2(log2_total)
    if REDIST:  # the corrections of `workbench.kernels.triton_redistribution`
        keep, boost = factors(z_s, z_t, tl.load(Redistribute + head))
        keep, boost = tl.where(seen_any, keep, 1.0), tl.where(seen_any, boost, 1.0)
        acc += (boost - 1.0)[:, None] * acc_t - (1.0 - keep)[:, None] * acc_s
        if ENTROPY:
            bits = edited_entropy_bits(share * log2_l - t_i / l_safe, t_s, z_s, t_t, z_t, l_safe, log2_l, keep, boost)
        if SINK:
            z_i += (boost - 1.0) * k_t - (1.0 - keep) * k_s
        if DISTANCE:
            w_i += (boost - 1.0) * w_t - (1.0 - keep) * w_s
        if MAX:
            top, arg_i = edited_max(m_i, m_r, arg_r, m_s, arg_s, m_t, arg_t, keep, boost, lk)
        if SELF:  # the row's own key scales like any source or target key
            own_s, _ = key_set(q_abs, 0, start, SourceKeys, N_SOURCE, BLOCK_N)
            own_t, _ = target_set(q_abs, 0, start, TargetKeys, own_s, N_TARGET, BLOCK_N, REST_TARGETS)
            d_i *= tl.where(own_s, keep, tl.where(own_t, boost, 1.0))
    else:
        if ENTROPY:
            bits = share * log2_l - t_i / l_safe
        if MAX:
            top = tl.full([BLOCK_M], 1.0, tl.float32)  # p of the maximal key, exp2(m - m)
    out = acc / l_safe[:, None]
    if MIX:
        a = tl.load(Mix + head)
        v_self = load_rows(v_tile_base, q_abs, stride_vn, offs_d, lk, HEAD_DIM).to(tl.float32)
        out = (1.0 - a) * out + a * v_self
    if GATE:
        out = out * tl.load(Gate + head)
    out = tl.where(seen_any[:, None], out, 0.0)
    out_ptrs = Out + b * stride_ob + head * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=in_range[:, None] & (offs_d[None, :] < HEAD_DIM))

    nan = float("nan")
    row = bh * lq + offs_m
    if LSE:
        tl.store(Lse + row, tl.where(seen_any, lse2 * LN2, nan), mask=in_range)
    if NORM:  # what the received pass needs; NaN marks a row that sees no key
        tl.store(RowMax + row, tl.where(seen_any, m_i, nan), mask=in_range)
        tl.store(RowLog2Sum + row, log2_l, mask=in_range)
        if REDIST:
            tl.store(RowKeep + row, keep, mask=in_range)
            tl.store(RowBoost + row, boost, mask=in_range)
    if ENTROPY:
        tl.store(Entropy + row, tl.where(seen_any, bits * LN2, nan), mask=in_range)
    if SINK:
        tl.store(SinkMass + row, tl.where(seen_any, z_i / l_safe, nan), mask=in_range)
    if MAX:
        tl.store(MaxProb + row, tl.where(seen_any, top / l_safe, nan), mask=in_range)
        tl.store(ArgmaxKey + row, tl.where(seen_any, arg_i - start, -1).to(tl.int64), mask=in_range)
    if DISTANCE:
        tl.store(WindowDistance + row, tl.where(seen_any, w_i / l_safe, nan), mask=in_range)
    if SELF:
        tl.store(SelfMass + row, tl.where(seen_any, d_i / l_safe, nan), mask=in_range)
    if LEARNED_MASS:
        if SINK_LOGIT:
            tl.store(LearnedSinkMass + row, tl.where(seen_any, sink_share, nan), mask=in_range)
        else:
            tl.store(LearnedSinkMass + row, tl.where(seen_any, 0.0, nan), mask=in_range)
