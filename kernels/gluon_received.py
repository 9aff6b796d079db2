"""The attention each key receives, received_j = sum_i p_ij, as a warp-specialized pass for Hopper in Gluon.

The pass after the Gluon forward (`workbench.kernels.gluon_forward`), which stores each query's base-2 log
normaliser c_i = m_i + log2 l_i (its lse in base 2), so that p_ij = exp2(u_ij - c_i) with u = log2(e) scale q.k:
one multiply-add and one exponential a score, and no P V. Like the dK pass of a flash-attention backward, a
program holds 128 keys of one (batch, query head) and walks the query blocks that see them. One producer warp
issues the bulk tensor copies (TMA) of the keys once and of each block of 128 queries into a ring of shared-memory
stages; two consumer warpgroups, each holding 64 of the keys, compute K Q^T on the tensor cores (wgmma, the keys
as M, so that each key's sum over the queries runs along a row of the accumulator, within a thread and a quad),
the exponentials and the row sums, and free a stage once both have read it. Only the first query block (the
diagonal) is masked. FlashAttention-3's producer/consumer split (Shah et al., 2024).

The pass is bound by the exponentials at head_dim 64: a multiprocessor takes 16 exponentials a clock, against
about 30 scores a clock of K Q^T. With FMA_EXP (16 or 32) that many of each block's 128 queries take their
exponentials on the FMA and integer units instead, by a degree-5 polynomial of the fraction and the integer part
added to the exponent bits (as FlashAttention-4 does in its softmax; Zadouri et al., 2025), at a relative error of
2.3e-7 in float32, that of the hardware's ex2.approx. A block's scores are issued in parts, so that each
consumer's exponentials of one part run while the tensor cores compute the next. At head_dim 128 the tensor
cores bound the pass and FMA_EXP is 0.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from workbench.kernels.gluon_forward import MASKED, ROWS, TMA_LOAD, Role, _mma_layout

BLOCK_M = gl.constexpr(128)  # queries of a block, the N of the consumers' wgmma
ROUND = gl.constexpr(12582912.0)  # 1.5 * 2^23: x + ROUND holds round(x) in its low mantissa bits (|x| < 2^22)
# 2^f on [-0.5, 0.5], a near-minimax fit of the relative error (2.3e-7 evaluated in float32), lowest power first
C0 = gl.constexpr(1.0000001192092896)
C1 = gl.constexpr(0.6931469440460205)
C2 = gl.constexpr(0.24022120237350464)
C3 = gl.constexpr(0.05550713092088699)
C4 = gl.constexpr(0.009675541892647743)
C5 = gl.constexpr(0.0013276484096422791)


@gluon.jit
def exp2_fma(x):
    """2^x on the FMA and integer units, for x <= 0 (2^-126 for x below -126): 2^j 2^f with j = round(x) and
    f = x - j in [-0.5, 0.5], 2^f a polynomial and j added to its exponent bits."""
    x = gl.maximum(x, -126.0)
    t = x + ROUND
    f = x - (t - ROUND)
    poly = ((((C5 * f + C4) * f + C3) * f + C2) * f + C1) * f + C0
    bits = poly.to(gl.int32, bitcast=True) + (t.to(gl.int32, bitcast=True) << 23)
    return bits.to(gl.float32, bitcast=True)


@gluon.jit
def _scores(k, q, START: gl.constexpr, N: gl.constexpr):
    """K Q^T of the block's queries START .. START + N - 1, issued to the tensor cores (not waited for)."""
    return warpgroup_mma(k, q.slice(START, N).permute((1, 0)), gl.zeros([ROWS, N], gl.float32,
                                                                         layout=_mma_layout(N)),
                         use_acc=False, is_async=True)


@gluon.jit
def _normalisers(lse_ptr, m0, START: gl.constexpr, N: gl.constexpr):
    """c of the queries m0 + START .., laid out as the columns of their scores."""
    return gl.load(lse_ptr + m0 + START + gl.arange(0, N, layout=gl.SliceLayout(0, _mma_layout(N))))


@gluon.jit
def _row_sums(qk, c, m0, START: gl.constexpr, keys, post, DIAGONAL: gl.constexpr, FMA: gl.constexpr):
    """Each key's sum of p over the queries of the scores qk [64 keys, N queries from m0 + START]: exponentials
    on the FMA units if FMA; DIAGONAL: the queries before a key are masked."""
    x = qk * post - c[None, :]
    if DIAGONAL:
        layout: gl.constexpr = qk.type.layout
        cols = m0 + START + gl.arange(0, qk.type.shape[1], layout=gl.SliceLayout(0, layout))
        x = gl.where(cols[None, :] >= gl.convert_layout(keys, gl.SliceLayout(1, layout))[:, None], x, MASKED)
    if FMA:
        p = exp2_fma(x)
    else:
        p = gl.exp2(x)
    return gl.convert_layout(gl.sum(p, 1), keys.type.layout)


@gluon.jit
def _block_sum(k, q_smem, q_ready, q_empty, lse_ptr, j, m_first, keys, post, DIAGONAL: gl.constexpr,
               FMA_EXP: gl.constexpr):
    """The 64 keys' sums of p over query block j (queries m_first + 128 j ..), which waits in stage j % STAGES.
    The block's scores are issued in parts, so that the exponentials of one run while the tensor cores compute
    the next: 64 + 64 queries, or with FMA_EXP (16 or 32) 64 + 32 + 32 or 64 + 32 + 16 + 16, the last part's
    FMA_EXP queries taking their exponentials on the FMA units."""
    STAGES: gl.constexpr = q_smem.type.shape[0]
    s = j % STAGES
    m0 = m_first + j * BLOCK_M
    c0 = _normalisers(lse_ptr, m0, 0, 64)
    mbarrier.wait(q_ready.index(s), (j // STAGES) & 1)
    q = q_smem.index(s)
    if FMA_EXP == 32 and not DIAGONAL:
        c1 = _normalisers(lse_ptr, m0, 64, 32)
        c2 = _normalisers(lse_ptr, m0, 96, 32)
        a = _scores(k, q, 0, 64)
        b = _scores(k, q, 64, 32)
        f = _scores(k, q, 96, 32)
        a = warpgroup_mma_wait(2, deps=(a, ))
        total = _row_sums(a, c0, m0, 0, keys, post, False, False)
        b = warpgroup_mma_wait(1, deps=(b, ))
        total += _row_sums(b, c1, m0, 64, keys, post, False, False)
        f, _, _ = warpgroup_mma_wait(0, deps=(f, k, q))
        total += _row_sums(f, c2, m0, 96, keys, post, False, True)
    elif FMA_EXP == 16 and not DIAGONAL:
        c1 = _normalisers(lse_ptr, m0, 64, 32)
        c2 = _normalisers(lse_ptr, m0, 96, 16)
        c3 = _normalisers(lse_ptr, m0, 112, 16)
        a = _scores(k, q, 0, 64)
        b = _scores(k, q, 64, 32)
        d = _scores(k, q, 96, 16)
        f = _scores(k, q, 112, 16)
        a = warpgroup_mma_wait(3, deps=(a, ))
        total = _row_sums(a, c0, m0, 0, keys, post, False, False)
        b = warpgroup_mma_wait(2, deps=(b, ))
        total += _row_sums(b, c1, m0, 64, keys, post, False, False)
        d = warpgroup_mma_wait(1, deps=(d, ))
        total += _row_sums(d, c2, m0, 96, keys, post, False, False)
        f, _, _ = warpgroup_mma_wait(0, deps=(f, k, q))
        total += _row_sums(f, c3, m0, 112, keys, post, False, True)
    else:
        c1 = _normalisers(lse_ptr, m0, 64, 64)
        a = _scores(k, q, 0, 64)
        b = _scores(k, q, 64, 64)
        a = warpgroup_mma_wait(1, deps=(a, ))
        total = _row_sums(a, c0, m0, 0, keys, post, DIAGONAL, False)
        b, _, _ = warpgroup_mma_wait(0, deps=(b, k, q))
        total += _row_sums(b, c1, m0, 64, keys, post, DIAGONAL, False)
    mbarrier.arrive(q_empty.index(s), count=1)
    return total


@gluon.jit
def _consumer(k_smem, q_smem, k_bar, q_ready, q_empty, lse_ptr, received_ptr, n0, n_blocks, post, role):
    """Keys n0 + 64 role.WG .. of the program: their sums over every query block, stored as `received`
    (role.FLAGS: FMA_EXP)."""
    WG: gl.constexpr = role.WG
    FMA_EXP: gl.constexpr = role.FLAGS
    layout: gl.constexpr = gl.SliceLayout(1, _mma_layout(BLOCK_M))
    keys = n0 + WG * ROWS + gl.arange(0, ROWS, layout=layout)
    k = k_smem.index(WG)
    mbarrier.wait(k_bar, 0)
    total = _block_sum(k, q_smem, q_ready, q_empty, lse_ptr, 0, n0, keys, post, True, FMA_EXP)
    for j in range(1, n_blocks):
        total += _block_sum(k, q_smem, q_ready, q_empty, lse_ptr, j, n0, keys, post, False, FMA_EXP)
    gl.store(received_ptr + keys, total)


@gluon.jit
def _producer(q_desc, k_desc, k_smem, q_smem, k_bar, q_ready, q_empty, q_row, q_col, kv_row, kv_col, n_blocks):
    """One warp: the program's keys, then each query block once a stage is free."""
    STAGES: gl.constexpr = q_smem.type.shape[0]
    mbarrier.expect(k_bar, 2 * k_desc.block_type.nbytes)
    TMA_LOAD(k_desc, [kv_row, kv_col], k_bar, k_smem.index(0))
    TMA_LOAD(k_desc, [kv_row + ROWS, kv_col], k_bar, k_smem.index(1))
    for j in range(n_blocks):
        s = j % STAGES
        mbarrier.wait(q_empty.index(s), ((j // STAGES) & 1) ^ 1)  # a fresh barrier passes the wait on phase 1
        mbarrier.expect(q_ready.index(s), q_desc.block_type.nbytes)
        TMA_LOAD(q_desc, [q_row + j * BLOCK_M, q_col], q_ready.index(s), q_smem.index(s))


@gluon.jit
def gluon_received_pass(q_desc, k_desc, lse_ptr, received_ptr, n_heads, group, length, q_batch_rows, q_head_rows,
                        q_head_cols, kv_batch_rows, kv_head_rows, kv_head_cols, post, FMA_EXP: gl.constexpr,
                        STAGES: gl.constexpr):
    """received [batch, heads, length] of 128 keys of one (batch, query head) under causal self-attention; grid
    (length / 128, batch x heads), the keys that most queries see first.

    q_desc ([128, head_dim] tiles) and k_desc ([64, head_dim] tiles) see q and k as the 2-D views of
    `workbench.kernels.gluon_attention` (the forward's row and column arithmetic); lse_ptr holds each query's
    base-2 log normaliser m + log2 l, [batch, heads, length] contiguous; post = log2(e) scale.
    """
    HEAD_DIM: gl.constexpr = k_desc.block_type.shape[1]
    pid_n = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // n_heads
    head = bh % n_heads
    kv_head = head // group
    n0 = pid_n * 2 * ROWS
    n_blocks = gl.cdiv(length - n0, BLOCK_M)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [2, ROWS, HEAD_DIM], k_desc.layout)
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [STAGES, BLOCK_M, HEAD_DIM], q_desc.layout)
    k_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(k_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=2)  # both consumers release a stage
    row_base = bh * length
    cargs = (k_smem, q_smem, k_bar, q_ready, q_empty, lse_ptr + row_base, received_ptr + row_base, n0, n_blocks,
             post)
    pargs = (q_desc, k_desc, k_smem, q_smem, k_bar, q_ready, q_empty, b * q_batch_rows + head * q_head_rows + n0,
             head * q_head_cols, b * kv_batch_rows + kv_head * kv_head_rows + n0, kv_head * kv_head_cols, n_blocks)
    gl.warp_specialize([(_consumer, cargs + (Role(0, FMA_EXP), )), (_consumer, cargs + (Role(1, FMA_EXP), )),
                        (_producer, pargs)], [4, 1], [232, 40])
