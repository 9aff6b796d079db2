"""Fused flash-style attention forward that also computes the per-head statistics of `kernels.contract`.

One program handles BLOCK_M query rows of one (batch, query head) and walks the key blocks that those rows
may see (causal: up to the diagonal; sliding window: from the window's first key; left padding: from the
first real key). The online-softmax recurrence, per row, over key blocks with logits s (masked keys -inf):

    m'  = max(m, max_j s_j)            alpha = exp(m - m')          p_j = exp(s_j - m')
    l'  = alpha l  + sum_j p_j         acc' = alpha acc + sum_j p_j v_j
    t'  = alpha t  + sum_j p_j s_j     (entropy: H = m + log l - t / l, i.e. lse - E_p[s])
    z'  = alpha z  + sum_{j sink} p_j  (sink mass = z / l)
    w'  = alpha w  + sum_j p_j d_ij    (window distance = w / l, d_ij = min(|i - j|, cap))

and the row's argmax key is kept with its logit (max_prob = exp(max s - lse) = 1 / l). Masked logits are a
large finite negative number rather than -inf: p is then exactly 0 for them once the row has seen a real key
(and whatever a row gathered over masked keys before that is wiped by alpha = 0), and p * s needs no guard.
Blocks that hold no sink key, and blocks wholly beyond the distance cap, skip those statistics' elementwise
work.
"""

from __future__ import annotations

import triton
import triton.language as tl

MASKED = tl.constexpr(-1.0e30)  # logit of a masked key: exp(MASKED - m) = 0, and 0 * MASKED = 0 (no NaN)


@triton.jit
def edited_logits(q, k, offs_n, q_abs, q_valid, rel_k, head,
                  scale, softcap, temperature_ptr, key_bias_ptr, bias_keys_ptr, window, lk,
                  CAUSAL: tl.constexpr, SOFTCAP: tl.constexpr, TEMPERATURE: tl.constexpr, N_BIAS: tl.constexpr,
                  WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    """Logits [BLOCK_M, BLOCK_N] of q against a key block, with scale, softcap, temperature and key bias
    applied, and which of them are visible (causality, window, query validity, key range)."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    if SOFTCAP:
        # softcap * tanh(s / softcap), with tanh from exp (stable for both signs)
        x = s / softcap
        e = tl.exp(-2.0 * tl.abs(x))
        s = softcap * tl.where(x >= 0, 1.0, -1.0) * (1.0 - e) / (1.0 + e)
    if TEMPERATURE:
        s = s / tl.load(temperature_ptr + head)
    for n in tl.static_range(N_BIAS):
        key = tl.load(bias_keys_ptr + n)
        bias = tl.load(key_bias_ptr + head * N_BIAS + n)
        s += tl.where(rel_k[None, :] == key, bias, 0.0)
    diff = q_abs[:, None] - offs_n[None, :]
    visible = q_valid[:, None] & (offs_n[None, :] < lk)
    if CAUSAL:
        visible &= diff >= 0
    if WINDOW:
        visible &= tl.abs(diff) < window
    return s, visible


@triton.jit
def _stats_forward(
    Q, K, V, Out, KeyValid, Start, SinkKeys, Temperature, KeyBias, BiasKeys, Gate, Mix,
    Lse, Entropy, SinkMass, MaxProb, ArgmaxKey, WindowDistance,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    n_heads, group, lq, lk, scale, softcap, window, distance_cap,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, PADDED: tl.constexpr,
    TEMPERATURE: tl.constexpr, N_BIAS: tl.constexpr, GATE: tl.constexpr, MIX: tl.constexpr,
    N_SINK: tl.constexpr, ENTROPY: tl.constexpr, SINK: tl.constexpr, MAX: tl.constexpr,
    DISTANCE: tl.constexpr, CAP: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, head = bh // n_heads, bh % n_heads
    kv_head = head // group
    offset = lk - lq
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_abs = offs_m + offset  # each query row's position among the keys
    start = tl.load(Start + b)
    in_range = offs_m < lq
    if PADDED:
        q_valid = in_range & (tl.load(KeyValid + b * lk + q_abs, mask=in_range, other=0) != 0)
    else:
        q_valid = in_range

    q_ptrs = Q + b * stride_qb + head * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=in_range[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    k_base = K + b * stride_kb + kv_head * stride_kh
    v_base = V + b * stride_vb + kv_head * stride_vh

    # the key blocks these rows may see
    lo = 0
    hi = lk
    if CAUSAL:
        hi = tl.minimum(lk, (pid_m + 1) * BLOCK_M + offset)
    elif WINDOW:
        hi = tl.minimum(lk, (pid_m + 1) * BLOCK_M + offset + window - 1)
    if WINDOW:
        lo = tl.maximum(0, pid_m * BLOCK_M + offset - window + 1)
    if PADDED:
        lo = tl.maximum(lo, start)
    lo = (lo // BLOCK_N) * BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    t_i = tl.zeros([BLOCK_M], tl.float32)
    z_i = tl.zeros([BLOCK_M], tl.float32)
    w_i = tl.zeros([BLOCK_M], tl.float32)
    arg_i = tl.full([BLOCK_M], -1, tl.int32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kv_valid = (offs_n[:, None] < lk) & (offs_d[None, :] < HEAD_DIM)
        rel_k = offs_n - start
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_valid, other=0.0)
        s, visible = edited_logits(
            q, k, offs_n, q_abs, q_valid, rel_k, head, scale, softcap, Temperature, KeyBias, BiasKeys, window, lk,
            CAUSAL, SOFTCAP, TEMPERATURE, N_BIAS, WINDOW, PRECISION)
        if PADDED:
            visible &= tl.load(KeyValid + b * lk + offs_n, mask=offs_n < lk, other=0)[None, :] != 0
        s = tl.where(visible, s, MASKED)

        block_max = tl.max(s, 1)
        m_new = tl.maximum(m_i, block_max)
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        if MAX:
            block_arg = tl.argmax(s, 1).to(tl.int32) + n0
            arg_i = tl.where(block_max > m_i, block_arg, arg_i)
        row_sum = tl.sum(p, 1)
        l_i = l_i * alpha + row_sum
        if ENTROPY:
            t_i = t_i * alpha + tl.sum(p * s, 1)
        if SINK:
            z_i = z_i * alpha
            is_sink = rel_k == tl.load(SinkKeys)
            for i in tl.static_range(1, N_SINK):
                is_sink |= rel_k == tl.load(SinkKeys + i)
            if tl.max(is_sink.to(tl.int32), 0) > 0:  # most blocks hold no sink key
                z_i += tl.sum(tl.where(is_sink[None, :], p, 0.0), 1)
        if DISTANCE:
            w_i = w_i * alpha
            if CAP:
                q_lo = pid_m * BLOCK_M + offset
                far = (q_lo - (n0 + BLOCK_N - 1) >= distance_cap) | (n0 - (q_lo + BLOCK_M - 1) >= distance_cap)
                if far:  # every pair of the block is at least the cap apart
                    w_i += distance_cap * row_sum
                else:
                    dist = tl.minimum(tl.abs(q_abs[:, None] - offs_n[None, :]).to(tl.float32), distance_cap)
                    w_i += tl.sum(p * dist, 1)
            else:
                w_i += tl.sum(p * tl.abs(q_abs[:, None] - offs_n[None, :]).to(tl.float32), 1)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_valid, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    row_ok = m_i > MASKED / 2  # the row saw at least one key
    l_safe = tl.where(row_ok, l_i, 1.0)
    out = acc / l_safe[:, None]
    if MIX:
        a = tl.load(Mix + head)
        v_self = tl.load(v_base + q_abs[:, None] * stride_vn + offs_d[None, :],
                         mask=in_range[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0).to(tl.float32)
        out = (1.0 - a) * out + a * v_self
    if GATE:
        out = out * tl.load(Gate + head)
    out = tl.where(row_ok[:, None], out, 0.0)
    o_ptrs = Out + b * stride_ob + head * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=in_range[:, None] & (offs_d[None, :] < HEAD_DIM))

    nan = float("nan")
    lse = tl.where(row_ok, m_i + tl.log(l_safe), nan)
    row = bh * lq + offs_m
    tl.store(Lse + row, lse, mask=in_range)
    if ENTROPY:
        tl.store(Entropy + row, tl.where(row_ok, lse - t_i / l_safe, nan), mask=in_range)
    if SINK:
        tl.store(SinkMass + row, tl.where(row_ok, z_i / l_safe, nan), mask=in_range)
    if MAX:
        tl.store(MaxProb + row, tl.where(row_ok, 1.0 / l_safe, nan), mask=in_range)
        tl.store(ArgmaxKey + row, tl.where(row_ok, arg_i - start, -1).to(tl.int64), mask=in_range)
    if DISTANCE:
        tl.store(WindowDistance + row, tl.where(row_ok, w_i / l_safe, nan), mask=in_range)


@triton.jit
def _received(
    Q, K, KeyValid, Start, Temperature, KeyBias, BiasKeys, Lse, Received,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    n_heads, group, lq, lk, scale, softcap, window,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, PADDED: tl.constexpr,
    TEMPERATURE: tl.constexpr, N_BIAS: tl.constexpr, PRECISION: tl.constexpr,
):
    """received_j = sum_i p_ij for one key block, like the dK pass of a backward: p is recomputed from q, k
    and the forward's lse, walking only the query blocks that may see these keys."""
    pid_n, bh = tl.program_id(0), tl.program_id(1)
    b, head = bh // n_heads, bh % n_heads
    kv_head = head // group
    offset = lk - lq
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    start = tl.load(Start + b)
    rel_k = offs_n - start
    k = tl.load(K + b * stride_kb + kv_head * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                mask=(offs_n[:, None] < lk) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    key_ok = offs_n < lk
    if PADDED:
        key_ok &= tl.load(KeyValid + b * lk + offs_n, mask=offs_n < lk, other=0) != 0

    lo = 0
    hi = lq
    if CAUSAL:
        lo = tl.maximum(0, n0 - offset)
    elif WINDOW:
        lo = tl.maximum(0, n0 - offset - window + 1)
    if WINDOW:
        hi = tl.minimum(lq, n0 + BLOCK_N - offset + window - 1)
    lo = (lo // BLOCK_M) * BLOCK_M

    total = tl.zeros([BLOCK_N], tl.float32)
    for m0 in range(lo, hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        in_range = offs_m < lq
        q_abs = offs_m + offset
        q = tl.load(Q + b * stride_qb + head * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                    mask=in_range[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
        lse = tl.load(Lse + bh * lq + offs_m, mask=in_range, other=float("nan"))
        q_valid = in_range & (lse == lse)  # NaN lse: a row that sees no key
        s, visible = edited_logits(
            q, k, offs_n, q_abs, q_valid, rel_k, head, scale, softcap, Temperature, KeyBias, BiasKeys, window, lk,
            CAUSAL, SOFTCAP, TEMPERATURE, N_BIAS, WINDOW, PRECISION)
        visible &= key_ok[None, :]
        p = tl.where(visible, tl.exp(s - tl.where(q_valid, lse, 0.0)[:, None]), 0.0)
        total += tl.sum(p, 0)
    tl.store(Received + bh * lk + offs_n, total, mask=offs_n < lk)
