"""The VAR redistribution edit (`workbench.kernels.contract`, HeadEdits.redistribute) inside the fused kernels.

With a = p / l the unedited map of a row, S and T its mass on the source and target keys and f the head's
fraction, the edited map is a' = keep a on the sources, boost a on the targets, a elsewhere, where

    keep = 1 - f,  boost = 1 + f S / T          (keep = boost = 1 when T = 0: the row is left as it is)

Both factors are known only at the end of the row, so the forward keeps, for each of the two key sets X, the
same running sums as for the whole row restricted to X (rescaled by alpha like the others): the mass z_X, the
value sum acc_X, t_X = sum p x for the entropy, the distance sum w_X and the mass on the statistics' sink
keys. Every statistic of a' is then a correction of the unedited one, e.g.

    out' = (acc - (1 - keep) acc_S + (boost - 1) acc_T) / l
    H'   = H + (1 - keep) E_S + (1 - boost) E_T - keep S log keep - boost T log boost,   E_X = sum_X a log a

and the maximum of a' is the largest of the maxima of the three sets (sources, targets, the rest), each
scaled by its factor. The `received` pass multiplies each recomputed a by the factor of its row and key
(the forward stores keep and boost per row).
"""

from __future__ import annotations

import triton
import triton.language as tl

from workbench.kernels.triton_logits import MASKED


@triton.jit
def key_set(offs_n, n0, start, keys_ptr, N: tl.constexpr, BLOCK_N: tl.constexpr):
    """(hit, inside): which keys of the block offs_n = n0 .. n0 + BLOCK_N - 1 sit at the N positions keys_ptr
    counts from the first real key `start`, and whether the block holds any of them."""
    key = start + tl.load(keys_ptr)
    hit = offs_n == key
    inside = (key >= n0) & (key < n0 + BLOCK_N)
    for s in tl.static_range(1, N):
        key = start + tl.load(keys_ptr + s)
        hit |= offs_n == key
        inside |= (key >= n0) & (key < n0 + BLOCK_N)
    return hit, inside


@triton.jit
def target_set(offs_n, n0, start, keys_ptr, is_source, N: tl.constexpr, BLOCK_N: tl.constexpr,
               REST: tl.constexpr):
    """(hit, inside) of the redistribution's target keys in the block offs_n, as `key_set`; REST: the targets
    are every key that is not a source (ACT's exact scaling), so no list is walked (`is_source`: the block's
    sources). Keys no row sees carry p = 0 and a masked logit either way."""
    if REST:
        return ~is_source, True
    else:
        return key_set(offs_n, n0, start, keys_ptr, N, BLOCK_N)


@triton.jit
def update_set(z, t, w, zs, p, x, dist, shift, alpha, hit, inside, is_sink,
               ENTROPY: tl.constexpr, SINK: tl.constexpr, DISTANCE: tl.constexpr):
    """One key block's step of the running sums of a key set `hit`: mass z, t = sum p x (shift = m_old - m_new),
    distance sum w and mass zs on the statistics' sink keys `is_sink`. inside: the block holds a key of the set
    (else the sums are only rescaled)."""
    if ENTROPY:
        t = alpha * (t + shift * z)
    z = alpha * z
    if SINK:
        zs = alpha * zs
    if DISTANCE:
        w = alpha * w
    if inside:
        p_in = tl.where(hit[None, :], p, 0.0)
        if ENTROPY:
            t += tl.sum(p_in * x, 1)
        z += tl.sum(p_in, 1)
        if SINK:
            zs += tl.sum(tl.where(is_sink[None, :], p_in, 0.0), 1)
        if DISTANCE:
            w += tl.sum(p_in * dist, 1)
    return z, t, w, zs


@triton.jit
def update_max(m, arg, u, hit, offs_n, lk):
    """The running maximum logit m of the key set `hit` and its first key arg, after one key block."""
    u = tl.where(hit[None, :], u, MASKED)
    block_max = tl.max(u, 1)
    first = tl.min(tl.where(u == block_max[:, None], offs_n[None, :], lk), 1)
    return tl.maximum(m, block_max), tl.where(block_max > m, first, arg)


@triton.jit
def factors(z_source, z_target, fraction):
    """(keep, boost) of each row from its source and target masses (any common scale)."""
    moving = z_target > 0
    keep = tl.where(moving, 1.0 - fraction, 1.0)
    boost = tl.where(moving, 1.0 + fraction * z_source / tl.where(moving, z_target, 1.0), 1.0)
    return keep, boost


@triton.jit
def edited_entropy_bits(bits, t_source, z_source, t_target, z_target, l, log2_l, keep, boost):
    """The entropy of a' in bits, from that of a (`bits`) and the sets' running sums (module docstring)."""
    source, target = z_source / l, z_target / l
    e_source = t_source / l - source * log2_l  # sum_S a log2 a
    e_target = t_target / l - target * log2_l
    keep_term = tl.where(keep > 0, keep * source * tl.log2(tl.where(keep > 0, keep, 1.0)), 0.0)
    return bits + (1.0 - keep) * e_source + (1.0 - boost) * e_target - keep_term - boost * target * tl.log2(boost)


@triton.jit
def edited_max(m, m_rest, arg_rest, m_source, arg_source, m_target, arg_target, keep, boost, lk):
    """(max_j a'_j * l, its first key) from the three sets' maximal logits and keys."""
    rest = tl.exp2(m_rest - m)
    source = keep * tl.exp2(m_source - m)
    target = boost * tl.exp2(m_target - m)
    best = tl.maximum(rest, tl.maximum(source, target))
    arg = tl.where(rest == best, arg_rest, lk)
    arg = tl.minimum(arg, tl.where(source == best, arg_source, lk))
    arg = tl.minimum(arg, tl.where(target == best, arg_target, lk))
    return best, arg
