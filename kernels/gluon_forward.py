"""A warp-specialized causal forward with the per-query statistics, for Hopper, in Gluon (Triton's explicit layout
and warp-specialization language).

The producer/consumer split of FlashAttention-3 (Shah et al., 2024): one producer warp issues the bulk tensor
copies (TMA) of each key and value block into a ring of shared-memory stages; two consumer warpgroups, each
holding 64 of the program's 128 query rows, compute the scores on the tensor cores (wgmma), the online softmax
with the statistics, and the output, and free a stage once both have read it. Each consumer waits only on its
own barriers, so one's softmax runs while the other's matrix products do, and no CTA-wide barrier stands in the
key loop. Triton 3.6 does not derive this split by itself on Hopper (benchmarks/NOTES.md, change 11).

The recurrence and the statistics are those of `workbench.kernels.triton_forward` (its docstring): base-2
logits u = log2(e) * scale * q.k, the running maximum m, sum l, the entropy's t, the argmax and the window
distance, each rescaled by alpha = exp2(m - m'). Every block but a program's last is wholly before its rows, so
the key loop takes them without mask or branch, and only the last (the diagonal) is masked: the split of causal
tiles into full and diagonal blocks of FlashAttention-2 (Dao, 2023). Every key a row sees is at or before it, so
a block of keys n0.. adds (i - n0) sum p - sum_c p c to the window distance (one multiply-add a score). Under a
cap W on the distance, the loop is split the same way by what the cap does to each block of a consumer's rows:
a block wholly W or more behind every row adds W sum p (no work a score), one that every row sees within W
the uncapped sum, and only the few that straddle the cap take min(i - j, W) a score. Each row's
first position at its block maximum replaces its argmax where its maximum rises (a row-wise test: no
reduction across the warpgroup's warps in the loop). The sink and self masses are not carried through the
loop: after it, each row's logit with each sink key and with its own key is recomputed in float32 from q and k,
and exp2(u - m) / l is its probability. Rows are every query of a causal self-attention (no padding, no window,
no edit), so every row sees its own key and no row is empty. `workbench.kernels.gluon_attention` says when it
runs.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.language.core import _aggregate as aggregate

# the bulk tensor copy into shared memory: `async_load` since Triton 3.7, `async_copy_global_to_shared` before
TMA_LOAD = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
ROWS = gl.constexpr(64)  # query rows of one consumer warpgroup (the M of wgmma)
MASKED = gl.constexpr(-1.0e30)
LN2 = gl.constexpr(0.6931471805599453)
WITHIN = gl.constexpr(0)  # a block's keys are all within the distance cap of all its rows (or there is no cap)
BEYOND = gl.constexpr(1)  # ... all at the cap or beyond it
ACROSS = gl.constexpr(2)  # ... some within it, some not


@aggregate
class Role:
    """A consumer's compile-time arguments: which warpgroup, the forward's FLAGS (`flags`; 0 in the received pass)
    and the received pass's GROUP. A worker partition's arguments are flattened to values, and only constexpr
    objects survive that as constants."""
    WG: gl.constexpr
    FLAGS: gl.constexpr
    GROUP: gl.constexpr

    @gluon.constexpr_function
    def __init__(self, wg, flags, group=1):
        self.WG = gl.constexpr(wg)
        self.FLAGS = gl.constexpr(flags)
        self.GROUP = gl.constexpr(group)


@gluon.constexpr_function
def _has(flags, name):
    """Whether the kernel's FLAGS (`flags` below) ask for the statistic or step `name` of FLAG_BITS."""
    bit = [i for i, known in enumerate(FLAG_BITS) if known == name][0]
    return gl.constexpr((flags >> bit) & 1 == 1)


@gluon.constexpr_function
def _parity(j, pairs):
    """A compile-time block or stage j's PARITY for `_stage`: j % 2 where the barriers come in a pair, else -1."""
    return j % 2 if pairs else -1


@gluon.jit
def _stage_barriers(STAGES: gl.constexpr, PAIRS: gl.constexpr):
    """An mbarrier a stage: one array of them or, with PAIRS, two, the even stages' and the odd stages'. Triton
    3.6's shared-memory analysis puts a barrier across the warpgroup between two waits on one array (it tells
    allocations apart, not indices of one), so the key loop meets it every block; with a pair, taken two blocks
    at a time, every other block (benchmarks/NOTES.md, change 27). It is not needed there: a stage's barrier
    cannot move on to a later phase before every consumer thread has passed its wait, since a stage is freed only
    after each consumer's own wait and reads."""
    if PAIRS:
        return (gl.allocate_shared_memory(gl.int64, [STAGES // 2, 1], mbarrier.MBarrierLayout()),
                gl.allocate_shared_memory(gl.int64, [STAGES // 2, 1], mbarrier.MBarrierLayout()))
    else:
        return gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())


@gluon.jit
def _stage(bars, s, PARITY: gl.constexpr):
    """Stage s's barrier in `bars` (`_stage_barriers`): PARITY -1 for one array, else s % 2, the array of the
    pair that holds it, at index s // 2."""
    if PARITY < 0:
        return bars.index(s)
    else:
        return bars[PARITY].index(s // 2)


@gluon.constexpr_function
def _mma_layout(n):
    """The register layout of a consumer's [64, n] wgmma accumulator (its 4 warps along the rows)."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, n, 16])


@gluon.jit
def _block(j, q, k_smem, v_smem, k_ready, v_ready, kv_empty, rows, cols, post, cap, m_i, l_i, t_i, w_i, arg_i, r_i,
           acc, FLAGS: gl.constexpr, DIAGONAL: gl.constexpr, CAPPED: gl.constexpr, PARITY: gl.constexpr):
    """One key block of a consumer: its scores, the online softmax with the statistics, its share of the output.
    DIAGONAL: the block holds keys after some of the rows (the program's last), which are masked; the others
    take no mask and no branch. CAPPED: WITHIN, BEYOND or ACROSS, where the block's keys lie from the distance
    cap `cap` (tokens, float32) of the consumer's rows. PARITY: j % 2, which picks the block's barriers under
    FLAGS' stage_pairs (`_stage`). Under FLAGS' thread_sums a block but the diagonal keeps l_i, t_i, w_i, the
    argmax arg_i and its maximum r_i as each thread's parts (`_parts`), which `_meet` joins before the diagonal."""
    STAGES: gl.constexpr = k_smem.type.shape[0]
    BLOCK_N: gl.constexpr = k_smem.type.shape[1]
    HEAD_DIM: gl.constexpr = k_smem.type.shape[2]
    ENTROPY: gl.constexpr = _has(FLAGS, "entropy")
    MAX: gl.constexpr = _has(FLAGS, "max_prob")
    DISTANCE: gl.constexpr = _has(FLAGS, "window_distance")
    WHOLE: gl.constexpr = DIAGONAL or not _has(FLAGS, "thread_sums")
    s_layout: gl.constexpr = _mma_layout(BLOCK_N)
    o_layout: gl.constexpr = _mma_layout(HEAD_DIM)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    s = j % STAGES
    phase = (j // STAGES) & 1
    n0 = j * BLOCK_N
    mbarrier.wait(_stage(k_ready, s, PARITY), phase)
    k = k_smem.index(s)
    qk = warpgroup_mma(q, k.permute((1, 0)), gl.zeros([ROWS, BLOCK_N], gl.float32, layout=s_layout), use_acc=False,
                       is_async=True)
    qk, _, _ = warpgroup_mma_wait(0, deps=(qk, q, k))
    if DIAGONAL:  # keys after a row are masked
        qk = gl.where(cols[None, :] + n0 <= rows[:, None], qk, MASKED)
    if WHOLE:
        qk_max = gl.max(qk, 1)
    else:  # each thread's maximum, then the row's
        part_max = gl.max(_parts(qk), 2)
        qk_max = gl.convert_layout(gl.max(part_max, 1), gl.SliceLayout(1, s_layout), assert_trivial=True)
    block_max = qk_max * post
    m_new = gl.maximum(m_i, block_max)
    if MAX:  # each row's (or thread's) first position at its block maximum, kept where its maximum rises
        if WHOLE:
            pos = gl.min(gl.where(qk == qk_max[:, None], cols[None, :], BLOCK_N), 1)
            arg_i = gl.where(block_max > m_i, n0 + pos, arg_i)
        else:
            at = _parts(gl.broadcast(cols[None, :], qk)[0])
            pos = gl.min(gl.where(_parts(qk) == part_max[:, :, None], at, BLOCK_N), 2)
            arg_i = gl.where(part_max * post > r_i, n0 + pos, arg_i)
            r_i = gl.maximum(r_i, part_max * post)
    x = qk * post - m_new[:, None]
    p = gl.exp2(x)
    alpha = gl.exp2(m_i - m_new)
    row_sum = _sums(p, WHOLE)
    alpha_t = _like(alpha, row_sum, WHOLE)
    if ENTROPY:
        t_i = alpha_t * (t_i + _like(m_i - m_new, row_sum, WHOLE) * l_i) + _sums(p * x, WHOLE)
    if DISTANCE:
        if CAPPED == WITHIN:  # sum_c p (i - n0 - c), one multiply-add a score: p is 0 for the keys after a row
            w_i = (w_i * alpha_t + _like((rows - n0).to(gl.float32), row_sum, WHOLE) * row_sum
                   - _sums(p * cols.to(gl.float32)[None, :], WHOLE))
        elif CAPPED == BEYOND:
            w_i = w_i * alpha_t + cap * row_sum
        else:
            distance = gl.minimum((rows[:, None] - (cols[None, :] + n0)).to(gl.float32), cap)
            w_i = w_i * alpha_t + _sums(p * distance, WHOLE)
    l_i = l_i * alpha_t + row_sum
    p16 = gl.convert_layout(p.to(q.dtype), p_layout)
    acc = acc * gl.convert_layout(alpha, row_o)[:, None]
    mbarrier.wait(_stage(v_ready, s, PARITY), phase)
    v = v_smem.index(s)
    acc = warpgroup_mma(p16, v, acc, is_async=True)
    acc, _ = warpgroup_mma_wait(0, deps=(acc, v))
    _release(_stage(kv_empty, s, PARITY), FLAGS)
    return m_new, l_i, t_i, w_i, arg_i, r_i, acc


@gluon.jit
def _parts(x):
    """x ([64, n] in the wgmma layout) as [64, 4, n / 4]: a row's columns lie with the 4 threads of a quad, axis 1
    the thread, axis 2 its columns in order (no data moves)."""
    BLOCK_N: gl.constexpr = x.type.shape[1]
    return gl.reshape(gl.permute(gl.reshape(x, [ROWS, BLOCK_N // 8, 4, 2]), (0, 2, 1, 3)), [ROWS, 4, BLOCK_N // 4])


@gluon.jit
def _sums(x, WHOLE: gl.constexpr):
    """Each row's sum of x ([64, n] in the wgmma layout), [64]; or, unless WHOLE, each thread's part of it,
    [64, 4], which leaves the shuffles across the quad out of the key loop (as FlashAttention-3 keeps its sum)."""
    if WHOLE:
        sums = gl.sum(x, 1)
    else:
        sums = gl.sum(_parts(x), 2)
    return sums


@gluon.jit
def _like(row_values, parts, WHOLE: gl.constexpr):
    """[64] per-row values shaped to combine with `parts` (of `_sums`): as they are, or as [64, 1] in the layout
    of the threads' parts, which holds each row in the same threads (no data moves)."""
    if WHOLE:
        shaped = row_values
    else:
        shaped = gl.convert_layout(row_values, gl.SliceLayout(1, parts.type.layout), assert_trivial=True)[:, None]
    return shaped


@gluon.jit
def _meet(state, row_layout: gl.constexpr):
    """The threads' parts of `_block`'s state joined into rows (`row_layout`): the sums added, the argmax the
    first position among the parts that hold the row's maximum m_i (the largest of r_i)."""
    m_i, l_i, t_i, w_i, arg_i, r_i, acc = state
    l_i = gl.convert_layout(gl.sum(l_i, 1), row_layout, assert_trivial=True)
    t_i = gl.convert_layout(gl.sum(t_i, 1), row_layout, assert_trivial=True)
    w_i = gl.convert_layout(gl.sum(w_i, 1), row_layout, assert_trivial=True)
    top = r_i == _like(m_i, r_i, False)
    arg_i = gl.convert_layout(gl.min(gl.where(top, arg_i, 2147483647), 1), row_layout, assert_trivial=True)
    return m_i, l_i, t_i, w_i, arg_i, m_i, acc


@gluon.jit
def _release(empty, FLAGS: gl.constexpr):
    """A consumer is done with a stage: its arrival on the stage's `empty` barrier. With FLAGS' thread_release
    every thread arrives on its own once its own reads are done (PTX cp.async.mbarrier.arrive.noinc, through Gluon's
    Ampere async_copy; the barrier counts all threads of both consumers), else one thread arrives after a barrier
    across the warpgroup, which `mbarrier.arrive` puts before it."""
    if _has(FLAGS, "thread_release"):
        async_copy.mbarrier_arrive(empty, increment_count=False)
    else:
        mbarrier.arrive(empty, count=1)


@gluon.jit
def _blocks(j0, j1, ops, state, FLAGS: gl.constexpr, CAPPED: gl.constexpr):
    """A consumer's key blocks j0 .. j1 - 1, none the diagonal (`_block`, with its operands `ops` and its carried
    `state`, which it returns): one at a time or, under FLAGS' stage_pairs, two at a time from an even block, so
    that each block's parity, and with it the array of its barriers (`_stage_barriers`), is known at compile time;
    an odd first and an even last block go alone."""
    if _has(FLAGS, "stage_pairs"):
        start = j0 + j0 % 2
        if (j0 % 2 == 1) & (j0 < j1):
            state = _block(j0, *ops, *state, FLAGS, False, CAPPED, 1)
        for j in range(start, j1 - 1, 2):
            for i in gl.static_range(2):
                state = _block(j + i, *ops, *state, FLAGS, False, CAPPED, i)
        if (start < j1) & ((j1 - start) % 2 == 1):
            state = _block(j1 - 1, *ops, *state, FLAGS, False, CAPPED, 0)
    else:
        for j in range(j0, j1):
            state = _block(j, *ops, *state, FLAGS, False, CAPPED, -1)
    return state


@gluon.constexpr_function
def release_count(flags):
    """The arrivals that free a stage: both consumers', one each, or each of their 2 x 128 threads."""
    return 2 * 128 if _has(flags, "thread_release") else 2


ROW_LAYOUT = gl.constexpr(gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0]))  # [64, head_dim] rows, for _key_logits


@gluon.jit
def _key_logits(q, k_ptr, k_row_stride, key_rows, post):
    """u = log2(e) scale q.k of each of the consumer's 64 rows (q: float32 in ROW_LAYOUT) with one key each
    (`key_rows`: a [64] tensor of key positions in the head that k_ptr starts), in float32 on the CUDA cores:
    what the score tile held for that key, to float32 rounding."""
    HEAD_DIM: gl.constexpr = q.type.shape[1]
    rows = gl.convert_layout(key_rows, gl.SliceLayout(1, ROW_LAYOUT))
    dims = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, ROW_LAYOUT))
    k = gl.load(k_ptr + rows.to(gl.int64)[:, None] * k_row_stride + dims[None, :]).to(gl.float32)
    return gl.sum(q * k, 1) * post


@gluon.jit
def _consumer(q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, out_ptr, lse_ptr, entropy_ptr, sink_mass_ptr,
              max_prob_ptr, argmax_ptr, distance_ptr, self_ptr, row_max_ptr, row_sum_ptr, sink_ptr, k_ptr, k_row_stride,
              out_row_stride, row_base, m0, n_blocks, post, cap, cap_keys, role):
    """Rows m0 + 64 role.WG .. of the program: the key loop, then the output rows and the statistics."""
    WG: gl.constexpr = role.WG
    FLAGS: gl.constexpr = role.FLAGS
    BLOCK_N: gl.constexpr = k_smem.type.shape[1]
    HEAD_DIM: gl.constexpr = k_smem.type.shape[2]
    LSE: gl.constexpr = _has(FLAGS, "lse")
    ENTROPY: gl.constexpr = _has(FLAGS, "entropy")
    SINK: gl.constexpr = _has(FLAGS, "sink_mass")
    MAX: gl.constexpr = _has(FLAGS, "max_prob")
    DISTANCE: gl.constexpr = _has(FLAGS, "window_distance")
    SELF: gl.constexpr = _has(FLAGS, "self_mass")
    NORM: gl.constexpr = _has(FLAGS, "norm")
    CAP: gl.constexpr = _has(FLAGS, "distance_cap")
    N_SINK: gl.constexpr = FLAGS >> SINK_SHIFT
    s_layout: gl.constexpr = _mma_layout(BLOCK_N)
    o_layout: gl.constexpr = _mma_layout(HEAD_DIM)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    q_first = m0 + WG * ROWS
    rows = q_first + gl.arange(0, ROWS, layout=row_s)
    cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    m_i = gl.full([ROWS], MASKED, gl.float32, layout=row_s)
    l_i = gl.zeros([ROWS], gl.float32, layout=row_s)
    t_i = gl.zeros([ROWS], gl.float32, layout=row_s)
    w_i = gl.zeros([ROWS], gl.float32, layout=row_s)
    arg_i = gl.zeros([ROWS], gl.int32, layout=row_s)
    acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, layout=o_layout)
    q = q_smem.index(WG)
    mbarrier.wait(q_bar, 0)
    n_beyond = 0  # blocks 0 .. n_beyond - 1 lie at the cap or beyond it for every row, n_beyond .. n_across - 1
    n_across = 0  # straddle it, the rest but the diagonal are within it (cap_keys: the cap as an integer)
    if CAP and DISTANCE:
        far = q_first - cap_keys - (BLOCK_N - 1)  # the last key n0 + BLOCK_N - 1 at least cap_keys behind row 0
        n_beyond = gl.minimum(gl.where(far >= 0, far // BLOCK_N + 1, 0), n_blocks - 1)
        near = q_first + ROWS - cap_keys  # the first key within the cap of the consumer's last row
        n_across = gl.minimum(gl.maximum(gl.where(near > 0, gl.cdiv(near, BLOCK_N), 0), n_beyond), n_blocks - 1)
    ops = (q, k_smem, v_smem, k_ready, v_ready, kv_empty, rows, cols, post, cap)
    if _has(FLAGS, "thread_sums"):
        parts = _sums(gl.zeros([ROWS, BLOCK_N], gl.float32, layout=s_layout), False)
        state = (m_i, parts, parts, parts, parts.to(gl.int32), parts + MASKED, acc)
    else:
        state = (m_i, l_i, t_i, w_i, arg_i, m_i, acc)
    state = _blocks(0, n_beyond, ops, state, FLAGS, BEYOND)
    state = _blocks(n_beyond, n_across, ops, state, FLAGS, ACROSS)
    state = _blocks(n_across, n_blocks - 1, ops, state, FLAGS, WITHIN)
    if _has(FLAGS, "thread_sums"):
        state = _meet(state, row_s)
    last = n_blocks - 1  # the diagonal, its parity known only at run time under stage_pairs
    LAST_CAPPED: gl.constexpr = ACROSS if CAP else WITHIN
    if not _has(FLAGS, "stage_pairs"):
        state = _block(last, *ops, *state, FLAGS, True, LAST_CAPPED, -1)
    elif last % 2 == 0:
        state = _block(last, *ops, *state, FLAGS, True, LAST_CAPPED, 0)
    else:
        state = _block(last, *ops, *state, FLAGS, True, LAST_CAPPED, 1)
    m_i, l_i, t_i, w_i, arg_i, _, acc = state

    out = acc / gl.convert_layout(l_i, row_o)[:, None]
    offs_m = q_first + gl.arange(0, ROWS, layout=row_o)
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    gl.store(out_ptr + offs_m[:, None] * out_row_stride + offs_d[None, :], out.to(q_smem.dtype))
    at = row_base + rows
    log2_l = gl.log2(l_i)
    if LSE:
        gl.store(lse_ptr + at, (m_i + log2_l) * LN2)
    if ENTROPY:
        gl.store(entropy_ptr + at, (log2_l - t_i / l_i) * LN2)
    if MAX:
        gl.store(max_prob_ptr + at, 1.0 / l_i)
        gl.store(argmax_ptr + at, arg_i.to(gl.int64))
    if DISTANCE:
        gl.store(distance_ptr + at, w_i / l_i)
    # the sink and self masses from the final normalisers and the logits of those keys alone, so that the key loop
    # carries neither (k_ptr: K's 2-D view at this program's first key of its head)
    if SINK or SELF:
        q_rows = q.load(ROW_LAYOUT).to(gl.float32)
    if SINK:
        z_i = gl.zeros([ROWS], gl.float32, layout=row_s)
        for i in gl.static_range(N_SINK):
            key = gl.load(sink_ptr + i)
            u = gl.convert_layout(_key_logits(q_rows, k_ptr, k_row_stride, gl.zeros_like(rows) + key, post), row_s)
            z_i += gl.where(key <= rows, gl.exp2(u - m_i), 0.0)
        gl.store(sink_mass_ptr + at, z_i / l_i)
    if SELF:
        u = gl.convert_layout(_key_logits(q_rows, k_ptr, k_row_stride, rows, post), row_s)
        gl.store(self_ptr + at, gl.exp2(u - m_i) / l_i)
    if NORM:  # what the received pass needs
        gl.store(row_max_ptr + at, m_i)
        gl.store(row_sum_ptr + at, log2_l)


@gluon.jit
def _two_tiles(desc, row, col, bar, smem):
    """A program's resident operand, two tiles of 64 rows from row (at column col), into smem[0] and smem[1] on
    one barrier: the forward's queries, the received pass's keys."""
    mbarrier.expect(bar, 2 * desc.block_type.nbytes)
    TMA_LOAD(desc, [row, col], bar, smem.index(0))
    TMA_LOAD(desc, [row + ROWS, col], bar, smem.index(1))


@gluon.jit
def _load(k_desc, v_desc, k_smem, v_smem, k_ready, v_ready, kv_empty, kv_row, kv_col, j, PARITY: gl.constexpr):
    """Key and value block j, into its stage once the stage is free (PARITY: as `_stage`'s, j % 2 or -1)."""
    STAGES: gl.constexpr = k_smem.type.shape[0]
    BLOCK_N: gl.constexpr = k_smem.type.shape[1]
    s = j % STAGES
    phase = (j // STAGES) & 1
    mbarrier.wait(_stage(kv_empty, s, PARITY), phase ^ 1)  # a fresh barrier passes the wait on phase 1
    mbarrier.expect(_stage(k_ready, s, PARITY), k_desc.block_type.nbytes)
    TMA_LOAD(k_desc, [kv_row + j * BLOCK_N, kv_col], _stage(k_ready, s, PARITY), k_smem.index(s))
    mbarrier.expect(_stage(v_ready, s, PARITY), v_desc.block_type.nbytes)
    TMA_LOAD(v_desc, [kv_row + j * BLOCK_N, kv_col], _stage(v_ready, s, PARITY), v_smem.index(s))


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, q_row, q_col,
              kv_row, kv_col, n_blocks, role):
    """One warp: the program's two query tiles, then each key and value block once a stage is free, two at a
    time under role.FLAGS' stage_pairs (the stages' barriers in two arrays, `_stage_barriers`)."""
    _two_tiles(q_desc, q_row, q_col, q_bar, q_smem)
    loads = (k_desc, v_desc, k_smem, v_smem, k_ready, v_ready, kv_empty, kv_row, kv_col)
    if _has(role.FLAGS, "stage_pairs"):
        for j in range(0, n_blocks - 1, 2):
            for i in gl.static_range(2):
                _load(*loads, j + i, i)
        if n_blocks % 2 == 1:
            _load(*loads, n_blocks - 1, 0)
    else:
        for j in range(n_blocks):
            _load(*loads, j, -1)


@gluon.jit
def gluon_stats_forward(q_desc, k_desc, v_desc, out_ptr, lse_ptr, entropy_ptr, sink_mass_ptr, max_prob_ptr, argmax_ptr,
                        distance_ptr, self_ptr, row_max_ptr, row_sum_ptr, sink_ptr, k_ptr, k_row_stride, n_heads,
                        group, length,
                        q_batch_rows, q_head_rows, q_head_cols, kv_batch_rows, kv_head_rows, kv_head_cols,
                        out_batch_stride, out_head_stride, out_row_stride, post, cap, cap_keys,
                        FLAGS: gl.constexpr, STAGES: gl.constexpr):
    """Output rows and statistics of 128 query rows of one (batch, query head); grid (length / 128, batch x heads),
    the longest rows first.

    The descriptors see q, k and v as 2-D [rows, columns] tensors (`workbench.kernels.gluon_attention`): query l of
    (batch b, head h) is row b q_batch_rows + h q_head_rows + l, its features start at column h q_head_cols (and
    likewise for the key-value heads), which covers [batch, heads, length, dim] and [batch, length, heads, dim]
    memory alike; k_ptr is the key view's first element and k_row_stride its row stride, for the sink and self
    keys' logits. The statistics are [batch, heads, length], contiguous. cap: the window distance's cap in tokens
    (FLAGS' distance_cap), cap_keys: the same cap as an integer.
    """
    BLOCK_M: gl.constexpr = 2 * ROWS
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    HEAD_DIM: gl.constexpr = k_desc.block_type.shape[1]
    pid_m = gl.num_programs(0) - 1 - gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // n_heads
    head = bh % n_heads
    kv_head = head // group
    m0 = pid_m * BLOCK_M
    n_blocks = gl.cdiv(m0 + BLOCK_M, BLOCK_N)
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2, ROWS, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    PAIRS: gl.constexpr = _has(FLAGS, "stage_pairs")
    k_ready = _stage_barriers(STAGES, PAIRS)
    v_ready = _stage_barriers(STAGES, PAIRS)
    kv_empty = _stage_barriers(STAGES, PAIRS)
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(_stage(k_ready, i, _parity(i, PAIRS)), count=1)
        mbarrier.init(_stage(v_ready, i, _parity(i, PAIRS)), count=1)
        mbarrier.init(_stage(kv_empty, i, _parity(i, PAIRS)), count=release_count(FLAGS))  # both consumers
    row_base = bh * length
    out_rows = out_ptr + b.to(gl.int64) * out_batch_stride + head.to(gl.int64) * out_head_stride
    k_rows = (k_ptr + (b * kv_batch_rows + kv_head * kv_head_rows).to(gl.int64) * k_row_stride
              + kv_head * kv_head_cols)  # key 0 of this program's key-value head
    cargs = (q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, out_rows, lse_ptr, entropy_ptr, sink_mass_ptr,
             max_prob_ptr, argmax_ptr, distance_ptr, self_ptr, row_max_ptr, row_sum_ptr, sink_ptr, k_rows,
             k_row_stride, out_row_stride, row_base, m0, n_blocks, post, cap, cap_keys)
    pargs = (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty,
             b * q_batch_rows + head * q_head_rows + m0, head * q_head_cols,
             b * kv_batch_rows + kv_head * kv_head_rows, kv_head * kv_head_cols, n_blocks, Role(0, FLAGS))
    gl.warp_specialize([(_consumer, cargs + (Role(0, FLAGS), )), (_consumer, cargs + (Role(1, FLAGS), )),
                        (_producer, pargs)], [4, 1], [232, 40])


FLAG_BITS = ("lse", "entropy", "sink_mass", "max_prob", "window_distance", "self_mass", "norm", "distance_cap",
             "thread_release", "stage_pairs", "thread_sums")
SINK_SHIFT = gl.constexpr(len(FLAG_BITS))  # the number of sink keys sits above the flags


def flags(wanted: set[str], n_sink: int) -> int:
    """The kernel's FLAGS: one bit per name of FLAG_BITS in `wanted` (max_prob stands for it and argmax_key;
    norm: the received pass follows; distance_cap: window_distance is capped; thread_release: every consumer
    thread releases a stage, `_release`; stage_pairs: the stages' barriers in two arrays, `_stage_barriers`, for
    an even number of stages; thread_sums: the running sums and the argmax kept per thread, `_meet`), and the
    number of sink keys above them."""
    return sum(1 << i for i, name in enumerate(FLAG_BITS) if name in wanted) | (n_sink << SINK_SHIFT.value)
