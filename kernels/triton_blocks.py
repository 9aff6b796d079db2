"""Block statistics in the `received` pass: block_mass and block_max (`workbench.kernels.contract`).

The received pass holds p [BLOCK_M, BLOCK_N] for a tile of query rows and keys; the tile's share of each
(query block, key block) is folded into the [n_qblocks, n_kblocks] map of its (batch, head) by atomic adds
(atomic max for block_max), so that no map of queries x keys is stored. Blocks count from each sequence's first
real query row and key, so a tile may straddle block edges: a block holds at least 64 positions, so a tile of
BLOCK_M rows meets at most (BLOCK_M + 62) // 64 + 1 query blocks (likewise for keys). A tile inside one query
block and one key block (the common case) adds one sum, taken over each row first.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def add_block_stats(p, offs_m, offs_n, m0, n0, lq, lk, first_row, start, block_size, n_qb, n_kb, bh,
                    BlockMass, BlockMax, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    MASS: tl.constexpr, MAX: tl.constexpr):
    """Add the tile p (rows offs_m from m0, keys offs_n from n0) to block_mass / block_max of head bh.

    first_row, start: the first real query row and key. Rows
    and keys past lq and lk (which an unmasked tile may hold, with p != 0) belong to no block.
    """
    qb0 = tl.maximum(m0 - first_row, 0) // block_size
    qb1 = tl.maximum(m0 + BLOCK_M - 1 - first_row, 0) // block_size
    kb0 = tl.maximum(n0 - start, 0) // block_size
    kb1 = tl.maximum(n0 + BLOCK_N - 1 - start, 0) // block_size
    base = bh * n_qb * n_kb
    if (qb0 == qb1) & (kb0 == kb1) & (m0 + BLOCK_M <= lq) & (n0 + BLOCK_N <= lk):  # one block: sum rows last
        ok = (qb0 < n_qb) & (kb0 < n_kb)
        if MASS:  # within each row first: a sum over rows crosses warps, so it goes over BLOCK_M values, not a tile
            tl.atomic_add(BlockMass + base + qb0 * n_kb + kb0, tl.sum(tl.sum(p, 1), 0), mask=ok)
        if MAX:
            tl.atomic_max(BlockMax + base + qb0 * n_kb + kb0, tl.max(tl.max(p, 1), 0), mask=ok)
    else:
        q_block = tl.where(offs_m < lq, tl.maximum(offs_m - first_row, 0) // block_size, -1)
        k_block = tl.where(offs_n < lk, tl.maximum(offs_n - start, 0) // block_size, -1)
        for dq in tl.static_range((BLOCK_M + 62) // 64 + 1):
            qb = qb0 + dq
            if qb <= qb1:
                rows = (q_block == qb)[:, None]
                if MASS:
                    if (qb0 == qb1) & (m0 + BLOCK_M <= lq):
                        mass = tl.sum(p, 0)
                    else:
                        mass = tl.sum(tl.where(rows, p, 0.0), 0)
                if MAX:
                    top = tl.max(tl.where(rows, p, 0.0), 0)
                for dk in tl.static_range((BLOCK_N + 62) // 64 + 1):
                    kb = kb0 + dk
                    if kb <= kb1:
                        cols = k_block == kb
                        ok = (qb < n_qb) & (kb < n_kb)
                        if MASS:
                            tl.atomic_add(BlockMass + base + qb * n_kb + kb, tl.sum(tl.where(cols, mass, 0.0)),
                                          mask=ok)
                        if MAX:
                            tl.atomic_max(BlockMax + base + qb * n_kb + kb, tl.max(tl.where(cols, top, 0.0)),
                                          mask=ok)


@triton.jit
def kept_keys(keep_ptr, offs_m, offs_n, first_row, start, keep_size, n_qb, n_kb):
    """[rows, keys] bool: the block-sparse edit keeps key offs_n for query row offs_m (`HeadEdits.block_keep`).

    keep_ptr points at the head's [n_qb, n_kb] mask; rows and keys past the grid (which the kernels mask or
    discard anyway) read its last block.
    """
    q_block = tl.minimum(tl.maximum(offs_m - first_row, 0) // keep_size, n_qb - 1)
    k_block = tl.minimum(tl.maximum(offs_n - start, 0) // keep_size, n_kb - 1)
    return tl.load(keep_ptr + q_block[:, None] * n_kb + k_block[None, :]) != 0


@triton.jit
def tile_kept(keep_ptr, m0, n0, first_row, start, keep_size, n_qb, n_kb, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr):
    """What the block-sparse edit does to the tile of rows m0.. and keys n0..: 0 drops all of it, 1 keeps all of
    it (the tile lies inside one block of the mask), 2 keeps part (it straddles blocks: `kept_keys` tells).

    One load per tile instead of a [rows, keys] gather: most tiles lie inside one block of the mask.
    """
    qb0 = tl.minimum(tl.maximum(m0 - first_row, 0) // keep_size, n_qb - 1)
    qb1 = tl.minimum(tl.maximum(m0 + BLOCK_M - 1 - first_row, 0) // keep_size, n_qb - 1)
    kb0 = tl.minimum(tl.maximum(n0 - start, 0) // keep_size, n_kb - 1)
    kb1 = tl.minimum(tl.maximum(n0 + BLOCK_N - 1 - start, 0) // keep_size, n_kb - 1)
    kept = (tl.load(keep_ptr + qb0 * n_kb + kb0) != 0).to(tl.int32)
    return tl.where((qb0 == qb1) & (kb0 == kb1), kept, 2)
