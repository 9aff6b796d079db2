"""The attention each key receives, received_j = sum_i p_ij, as a warp-specialized pass for Hopper in Gluon.

The pass after the Gluon forward (`workbench.kernels.gluon_forward`), which stores each query's base-2 log
normaliser c_i = m_i + log2 l_i (its lse in base 2), so that p_ij = exp2(u_ij - c_i) with u = log2(e) scale q.k:
one multiply-add and one exponential a score, and no P V. Like the dK pass of a flash-attention backward, a
program holds 128 keys of one (batch, query head) and walks the query blocks that see them. One producer warp
issues the bulk tensor copies (TMA) of the keys once and of each block of 128 queries, with those queries' c, into
a ring of shared-memory stages; two consumer warpgroups, each holding 64 of the keys, compute K Q^T on the tensor
cores (wgmma, the keys as M, so that each key's sum over the queries runs along a row of the accumulator, within
a thread and a quad), the exponentials and the row sums, and free a stage once both have read it. Only the first
query block (the diagonal) is masked. FlashAttention-3's producer/consumer split (Shah et al., 2024).

The query blocks go in groups of G (the kernel's GROUP, 2 by default), unrolled: each K Q^T of a group but the
first is issued before the exponentials of the block before it, so that the tensor cores and the special
function units work at once within a consumer (FlashAttention-3's intra-warpgroup overlap; the pass has no P V,
so two score tiles fit in a consumer's registers), and none is in flight across the loop's back edge: ptxas
serializes every wgmma of a loop that carries one across it (its note C7514), as it did for this pass's first,
software-pipelined loop. On an H100 at 32k, 32 heads x 128, the forward with this pass took 25.3-26.9 ms over
four runs, with the Triton pass 27.8-32.5, and 26.9 against 28.4 for the pipelined loop in the run that timed
both; at 32 / 8 heads x 64 every Gluon loop takes about 19.5 ms, since there the two consumers already overlapped
each other (benchmarks/NOTES.md, change 19).

At head_dim 64 the special function units' 16 exponentials a clock are the pass's floor (K Q^T alone would take
about 33 scores a clock). Moving a share of the exponentials onto the idle FMA units as a polynomial
(FlashAttention-4's partial emulation of the exponential) did not lift it: one group of 8 query columns in 4, 3
or 2 so made the pass alone 10-41% slower on an H100 at 8k and 32k (change 21).

Two programs a multiprocessor (the kernel's PROGRAMS, `gluon_attention.RECEIVED_PROGRAMS`) take blocks of 64
queries with the registers capped at launch (LAUNCH_REGISTERS), so each scheduler switches between four consumer
warps instead of two: with two a scheduler, the pass runs at about two thirds of the special function units'
rate, short of both that and its issue rate, so it waits on latencies more warps may hide (benchmarks/NOTES.md,
change 33).
With 64-query blocks the first two meet the program's diagonal, and the second consumer's keys see none of the
first block's queries.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from workbench.kernels.gluon_forward import MASKED, ROWS, TMA_LOAD, Role, _mma_layout, _two_tiles

C_LAYOUT = gl.NVMMASharedLayout(0, 32, rank=1)  # a block's normalisers c, [queries] float32, unswizzled
# per programs a multiprocessor (the kernel's PROGRAMS): the queries of a block (the N of the consumers' wgmma) and
# the registers a thread is launched with (None: as many as ptxas needs; the kernel's `warp_specialize` then gives
# the consumers 232 and the producer 40, or 104 and 24 with two programs). Two programs fit in the registers with
# 64-query blocks only: ptxas compiles every partition within the launch's 80 registers (2 x 384 threads a
# multiprocessor), which a 128-query block's accumulator does not fit (its note C7602)
BLOCK_QUERIES = {1: 128, 2: 64}
LAUNCH_REGISTERS = {1: None, 2: 80}


def launch_options(programs: int) -> dict[str, int]:
    """The launch options of the pass for `programs` a multiprocessor: 4 warps a partition, and the registers a
    thread where LAUNCH_REGISTERS caps them."""
    registers = LAUNCH_REGISTERS[programs]
    return {"num_warps": 4, **({"maxnreg": registers} if registers else {})}


@gluon.jit
def _issue(k, q_smem, c_smem, q_ready, j):
    """Query block j: its K Q^T, issued to the tensor cores once its stage has landed (not waited for), and its
    normalisers c from the same stage, laid out as the columns of its scores."""
    STAGES: gl.constexpr = q_smem.type.shape[0]
    BLOCK_M: gl.constexpr = q_smem.type.shape[1]
    s = j % STAGES
    layout: gl.constexpr = _mma_layout(BLOCK_M)
    mbarrier.wait(q_ready.index(s), (j // STAGES) & 1)
    qk = warpgroup_mma(k, q_smem.index(s).permute((1, 0)), gl.zeros([ROWS, BLOCK_M], gl.float32, layout=layout),
                       use_acc=False, is_async=True)
    c = c_smem.index(s).load(gl.SliceLayout(0, layout))
    return qk, c


@gluon.jit
def _row_sums(qk, c, m0, keys, post, DIAGONAL: gl.constexpr):
    """Each key's sum of p over the block's queries m0 .. (scores qk [64 keys, 128 queries], their normalisers c);
    DIAGONAL: the queries before a key are masked."""
    x = qk * post - c[None, :]
    if DIAGONAL:
        layout: gl.constexpr = qk.type.layout
        cols = m0 + gl.arange(0, qk.type.shape[1], layout=gl.SliceLayout(0, layout))
        x = gl.where(cols[None, :] >= gl.convert_layout(keys, gl.SliceLayout(1, layout))[:, None], x, MASKED)
    return gl.convert_layout(gl.sum(gl.exp2(x), 1), keys.type.layout)


@gluon.jit
def _taken(qk, c, j, m0, keys, post, q_empty, PENDING: gl.constexpr, DIAGONAL: gl.constexpr):
    """Query block j's row sums (`_row_sums`) once its K Q^T (qk) is in, with PENDING later ones left running, and
    its stage released at once: `mbarrier.arrive` puts a barrier across the warpgroup before its one thread's
    arrival, which orders every thread's earlier loads of the stage, the normalisers c included. (Every thread
    arriving on its own, as the forward frees its stages, was 1-2% slower here; benchmarks/NOTES.md, change 26.)"""
    STAGES: gl.constexpr = q_empty.type.shape[0]
    scores = warpgroup_mma_wait(PENDING, deps=(qk, ))
    mbarrier.arrive(q_empty.index(j % STAGES), count=1)
    return _row_sums(scores, c, m0, keys, post, DIAGONAL)


@gluon.jit
def _consumer(k_smem, q_smem, c_smem, k_bar, q_ready, q_empty, received_ptr, n0, n_blocks, post, role):
    """Keys n0 + 64 role.WG .. of the program: their sums over every query block, stored as `received`. The
    diagonal block(s) first, each alone, then the blocks that fill no group of role.GROUP (the kernel's GROUP), each
    alone, then the groups: each K Q^T of a group but the first is issued before the exponentials of the block
    before it, and the group's last is waited for within it."""
    WG: gl.constexpr = role.WG
    GROUP: gl.constexpr = role.GROUP
    BLOCK_M: gl.constexpr = q_smem.type.shape[1]
    DIAGONALS: gl.constexpr = 2 * ROWS // BLOCK_M  # the query blocks that meet the program's keys' diagonal
    layout: gl.constexpr = gl.SliceLayout(1, _mma_layout(BLOCK_M))
    keys = n0 + WG * ROWS + gl.arange(0, ROWS, layout=layout)
    k = k_smem.index(WG)
    mbarrier.wait(k_bar, 0)
    qk, c = _issue(k, q_smem, c_smem, q_ready, 0)
    total = _taken(qk, c, 0, n0, keys, post, q_empty, 0, True)
    for j in gl.static_range(1, DIAGONALS):  # 64-query blocks: the second one meets it too
        qk, c = _issue(k, q_smem, c_smem, q_ready, j)
        total += _taken(qk, c, j, n0 + j * BLOCK_M, keys, post, q_empty, 0, True)
    first = DIAGONALS + (n_blocks - DIAGONALS) % GROUP
    for j in range(DIAGONALS, first):
        qk, c = _issue(k, q_smem, c_smem, q_ready, j)
        total += _taken(qk, c, j, 0, keys, post, q_empty, 0, False)
    for j in range(first, n_blocks, GROUP):
        qk, c = _issue(k, q_smem, c_smem, q_ready, j)
        for i in gl.static_range(1, GROUP):  # block j + i's K Q^T runs under block j + i - 1's exponentials
            qk_next, c_next = _issue(k, q_smem, c_smem, q_ready, j + i)
            total += _taken(qk, c, j + i - 1, 0, keys, post, q_empty, 1, False)
            qk = qk_next
            c = c_next
        total += _taken(qk, c, j + GROUP - 1, 0, keys, post, q_empty, 0, False)
    gl.store(received_ptr + keys, total)


@gluon.jit
def _producer(q_desc, k_desc, c_desc, k_smem, q_smem, c_smem, k_bar, q_ready, q_empty, q_row, q_col, kv_row, kv_col,
              c_row, n_blocks):
    """One warp: the program's keys, then each query block and its normalisers once a stage is free."""
    STAGES: gl.constexpr = q_smem.type.shape[0]
    BLOCK_M: gl.constexpr = q_smem.type.shape[1]
    _two_tiles(k_desc, kv_row, kv_col, k_bar, k_smem)
    for j in range(n_blocks):
        s = j % STAGES
        mbarrier.wait(q_empty.index(s), ((j // STAGES) & 1) ^ 1)  # a fresh barrier passes the wait on phase 1
        mbarrier.expect(q_ready.index(s), q_desc.block_type.nbytes + c_desc.block_type.nbytes)
        TMA_LOAD(q_desc, [q_row + j * BLOCK_M, q_col], q_ready.index(s), q_smem.index(s))
        TMA_LOAD(c_desc, [c_row + j * BLOCK_M], q_ready.index(s), c_smem.index(s))


@gluon.jit
def gluon_received_pass(q_desc, k_desc, c_desc, received_ptr, n_heads, group, length, q_batch_rows, q_head_rows,
                        q_head_cols, kv_batch_rows, kv_head_rows, kv_head_cols, post,
                        STAGES: gl.constexpr, GROUP: gl.constexpr, PROGRAMS: gl.constexpr):
    """received [batch, heads, length] of 128 keys of one (batch, query head) under causal self-attention; grid
    (length / 128, batch x heads), the keys that most queries see first.

    q_desc ([BLOCK_QUERIES[PROGRAMS], head_dim] tiles) and k_desc ([64, head_dim] tiles) see q and k as the 2-D
    views of `workbench.kernels.gluon_attention` (the forward's row and column arithmetic); c_desc (tiles of as many
    queries) sees each query's base-2 log normaliser m + log2 l, [batch x heads x length] float32; post = log2(e)
    scale. PROGRAMS: the programs a multiprocessor is launched for (LAUNCH_REGISTERS). GROUP: the
    query blocks of a group of the consumers' loop (`_consumer`), 2 or more.
    """
    HEAD_DIM: gl.constexpr = k_desc.block_type.shape[1]
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
    pid_n = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // n_heads
    head = bh % n_heads
    kv_head = head // group
    n0 = pid_n * 2 * ROWS
    n_blocks = gl.cdiv(length - n0, BLOCK_M)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [2, ROWS, HEAD_DIM], k_desc.layout)
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [STAGES, BLOCK_M, HEAD_DIM], q_desc.layout)
    c_smem = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M], c_desc.layout)
    k_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(k_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=2)  # both consumers release a stage
    row_base = bh * length
    cargs = (k_smem, q_smem, c_smem, k_bar, q_ready, q_empty, received_ptr + row_base, n0, n_blocks, post)
    pargs = (q_desc, k_desc, c_desc, k_smem, q_smem, c_smem, k_bar, q_ready, q_empty,
             b * q_batch_rows + head * q_head_rows + n0, head * q_head_cols,
             b * kv_batch_rows + kv_head * kv_head_rows + n0, kv_head * kv_head_cols, row_base + n0, n_blocks)
    gl.warp_specialize([(_consumer, cargs + (Role(0, 0, GROUP), )), (_consumer, cargs + (Role(1, 0, GROUP), )),
                        (_producer, pargs)], [4, 1], [232 if PROGRAMS == 1 else 104, 40 if PROGRAMS == 1 else 24])
