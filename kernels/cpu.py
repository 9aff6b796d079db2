"""Attention with statistics on the CPU: the tracer's CPU backend, as fast as the model's own sdpa attention.

Same arguments, results and conventions as `workbench.kernels.reference.attention` (the oracle it is tested
against). The work goes by chunks of queries; a chunk [i0, i1) reads only the keys it may see,
[max(0, i0 - window + 1), i1) for causal attention (plus the window ahead when bidirectional): the hidden part
of causal and sliding-window maps is skipped, not masked. Per chunk, in float32:

1. scores s = (scale q) K^T, one batched matmul per chunk over (batch, key-value head), the query heads of a
   group stacked as rows, so K is never repeated (GQA); softcap c tanh(s / c) in place when the model has one;
2. one pass per row in C (kernels/cpu_rows.c, OpenMP over rows, AVX-512 where the processor has it): the
   temperature and key-bias edits, padding keys, then with m = max_j s_ij and e_ij = exp(s_ij - m)
       l = sum_j e_ij,  lse = m + log l,  max_prob = 1 / l  (argmax: the first key where s = m),
       entropy = lse - sum_j p_ij s_ij = log l - sum_j e_ij (s_ij - m) / l,
   (a learned sink logit joins l by a log-add, see cpu_rows.c)
   the one-pass identities of the fused kernels (FlashAttention, Dao et al. 2022, keeps the same (m, l)), while
   the row is in cache; the row is overwritten with p_ij = e_ij / l, with window_distance, self and sink mass
   read off it (with the VAR redistribution of `HeadEdits.redistribute`, the few source and target keys of
   the row are then rescaled, the entropy corrected on them and the max read again), and added to
   received_j (a buffer per thread, summed after the rows) while it is still in cache;
3. out = p V (a second batched matmul); the block statistics fold p into their [query block, key block] maps
   (`workbench.kernels.reference.BlockGrid`).

Steps 1 and 3 are the two matmuls PyTorch's own fused attention does, with the same float32 accumulation, so the
output equals `torch.nn.functional.scaled_dot_product_attention`'s to float rounding and the model's logits stay
its own; the statistics come out of the same probabilities. The row pass works on one row at a time in the
core's L1/L2 cache, and so reads the chunk once; the chunk size (`chunk_elements`, from the last-level cache) trades
the matmuls' efficiency, which grows with the rows per chunk, against the chunk's place in the cache hierarchy.

Inputs in bfloat16 / float16 are computed in float32 (the CPU's matmuls of low-precision inputs round their
output, the logits, to the input precision, which the statistics cannot afford), the output cast back.
float64 inputs go to the reference, which computes them in float64.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from workbench.kernels import reference
from workbench.kernels.contract import (
    DEFAULT_BLOCK_SIZE,
    HeadEdits,
    check_block_size,
    check_distance_cap,
    check_shapes,
    check_stats,
    sink_logits,
)
from workbench.kernels.cpu_build import Chunk, library

_THREAD = threading.local()  # the chunk buffer of each thread, see _workspace


def _last_level_cache(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """Bytes of the largest data cache that Linux lists for the first CPU, or None where it lists none (an entry
    that cannot be read or parsed is skipped: this runs at import)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    for index in root.glob("index*"):
        try:
            kind, size = ((index / name).read_text().strip() for name in ("type", "size"))
            if kind != "Instruction":
                sizes.append(int(size[:-1]) * units[size[-1]] if size[-1:] in units else int(size))
        except (OSError, ValueError):
            continue
    return max(sizes, default=None)


def chunk_elements(cache_bytes: int | None) -> int:
    """Scores a chunk takes for a last-level cache of cache_bytes (None: unknown): its float32 scores in a quarter
    of the cache, from 2^20 to MAX_CHUNK_ELEMENTS (that where the cache is unknown). The row pass and then p V read
    a chunk's scores again after the matmul that wrote them, from cache where they fit; `_chunk_queries` gives the
    chunk at least MIN_CHUNK_QUERIES queries, for the matmuls' efficiency."""
    if not cache_bytes:
        return MAX_CHUNK_ELEMENTS
    return min(MAX_CHUNK_ELEMENTS, max(1 << 20, cache_bytes // 16))


# Measured on SmolLM2-135M's trace against its sdpa forward, 2 cores (benchmarks/NOTES.md, "The CPU path's
# chunks"): on an Intel Xeon, 2^23 scores a chunk were the fastest of 2^19-2^25 at 2k-8k tokens; on an AMD EPYC
# with 32 MiB of L3, 2^23 took 1.29x at 2k and 1.35x at 8k, a quarter of the L3 (2^21) 1.02x at 2k, and 2^22
# (56 queries) 1.18x at 8k, where 2^21 gives 28 queries and took 1.30x.
MAX_CHUNK_ELEMENTS = 1 << 23
MIN_CHUNK_QUERIES = 64
CHUNK_ELEMENTS = chunk_elements(_last_level_cache())


def _chunk_queries(n_queries: int, scores_per_query: int) -> int:
    """Queries a chunk takes: CHUNK_ELEMENTS scores' worth, raised to MIN_CHUNK_QUERIES where that stays within
    MAX_CHUNK_ELEMENTS scores, at least 1 and at most n_queries."""
    fits = CHUNK_ELEMENTS // scores_per_query
    floor = min(MIN_CHUNK_QUERIES, MAX_CHUNK_ELEMENTS // scores_per_query)
    return max(1, min(n_queries, max(fits, floor)))


_PER_QUERY = ("lse", "entropy", "sink_mass", "max_prob", "window_distance", "self_mass", "learned_sink_mass")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    softcap: float | None = None,
    window: int | None = None,
    key_padding: torch.Tensor | None = None,
    stats: Sequence[str] = (),
    sink_keys: Sequence[int] = (0,),
    distance_cap: int | None = None,
    edits: HeadEdits | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    sinks: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Attention output and the requested statistics of `workbench.kernels.contract`, chunk by chunk.

    q: [B, Hq, Lq, D]; k: [B, Hkv, Lk, D]; v: [B, Hkv, Lk, Dv] (Hq a multiple of Hkv). Returns out
    [B, Hq, Lq, Dv] in q's dtype and a dict: query statistics [B, Hq, Lq] float32 (argmax_key int64) and
    `received` [B, Hq, Lk] float32, the block statistics [B, Hq, ceil(Lq / block_size), ceil(Lk / block_size)]
    float32. chunk_size: queries per chunk (default: `_chunk_queries`).
    """
    stats = check_stats(stats)
    block_size = check_block_size(block_size)
    distance_cap = check_distance_cap(distance_cap)
    edits = edits or HeadEdits()
    check_shapes(q, k, key_padding)
    edits.check(q.shape[1], q.shape[2], k.shape[2], q.shape[0])
    if q.device.type != "cpu":
        raise ValueError(f"the cpu backend takes CPU tensors, got {q.device}")
    kwargs = dict(causal=causal, scale=scale, softcap=softcap, window=window, key_padding=key_padding, stats=stats,
                  sink_keys=sink_keys, distance_cap=distance_cap, edits=edits, block_size=block_size, sinks=sinks,
                  chunk_size=chunk_size)
    if q.dtype == torch.float64:
        return reference.attention(q, k, v, **kwargs)
    return _attention(q, k, v, **kwargs)


def _attention(q, k, v, *, causal, scale, softcap, window, key_padding, stats, sink_keys, distance_cap, edits,
               block_size, sinks, chunk_size):
    batch, heads, lq, head_dim = q.shape
    kv_heads, lk = k.shape[1], k.shape[2]
    group, offset = heads // kv_heads, lk - lq
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    window = None if window is None or window >= lk else int(window)  # a window wider than the input hides nothing
    f32 = dict(dtype=torch.float32, device=q.device)
    qs = (q.float() * scale).view(batch, kv_heads, group, lq, head_dim)
    kf = k.float().reshape(batch * kv_heads, lk, head_dim)
    vf = v.float().reshape(batch * kv_heads, lk, v.shape[-1])

    padded = key_padding is not None and not bool(key_padding.all())
    valid = key_padding.to(torch.uint8).contiguous() if padded else None
    start = (valid.argmax(-1) if padded else torch.zeros(batch, dtype=torch.long)).to(torch.int64).contiguous()
    sink_positions = torch.tensor(sorted(set(sink_keys)) or [0], dtype=torch.int64)
    inv_temperature = None if edits.temperature is None else (1.0 / edits.temperature.to(**f32)).contiguous()
    bias = None if edits.key_bias is None else _dense_bias(edits, valid, start, batch, lk)
    sink_logit = sink_logits(None if sinks is None else sinks.detach(), edits, heads, torch.float32, q.device)
    redistributing = edits.redistribute is not None
    fraction = edits.redistribute.to(**f32).contiguous() if redistributing else None
    sources, targets = ((edits.source_keys.to(torch.int64).contiguous(), edits.target_keys.to(torch.int64).contiguous())
                        if redistributing else (None, None))
    res = {name: torch.empty(batch, heads, lq, **f32) for name in stats if name in _PER_QUERY}
    if "argmax_key" in stats:
        res["argmax_key"] = torch.empty(batch, heads, lq, dtype=torch.int64)
    if "received" in stats:
        res["received"] = torch.zeros(batch, heads, lk, **f32)
    blocks = (reference.BlockGrid.of(start, lq, lk, block_size) if {"block_mass", "block_max"} & set(stats)
              else None)
    if blocks:
        res |= blocks.empty(stats, heads, torch.float32)
    keep = None if edits.block_keep is None else edits.block_keep.to(q.device)
    keep_grid = None if keep is None else reference.BlockGrid.of(start, lq, lk, edits.keep_block_size)
    blind = None if keep is None else torch.zeros(batch, heads, lq, dtype=torch.bool)  # rows left with no key
    out = torch.empty(batch, kv_heads, group, lq, v.shape[-1], **f32)

    span = lk if window is None else min(lk, (1 if causal else 2) * window)  # widest key range of a query
    chunk = chunk_size or _chunk_queries(lq, max(1, batch * heads * span))
    buffer = _workspace(batch * heads * chunk * min(lk, span + chunk))
    args = Chunk(heads=heads, n_keys=lk, causal=int(causal), window=window or 0,
                 valid=_pointer(valid), start=start.data_ptr(), inv_temperature=_pointer(inv_temperature),
                 bias=_pointer(bias), sink_keys=sink_positions.data_ptr(), n_sink=len(set(sink_keys)),
                 distance_cap=math.inf if distance_cap is None else float(distance_cap), fraction=_pointer(fraction),
                 source_keys=_pointer(sources), target_keys=_pointer(targets),
                 n_source=0 if sources is None else sources.numel(), n_target=0 if targets is None else targets.numel(),
                 out_length=lq, sink_logit=_pointer(sink_logit),
                 **{name: _pointer(res.get(name)) for name in (*_PER_QUERY, "argmax_key", "received")})
    rows_pass = library().softmax_rows
    for c0 in range(0, lq, chunk):
        c1 = min(lq, c0 + chunk)
        k0, k1 = _key_range(c0 + offset, c1 + offset, lk, causal, window)
        n, width = c1 - c0, k1 - k0
        scores = buffer[: batch * heads * n * width].view(batch * kv_heads, group * n, width)
        torch.bmm(qs[:, :, :, c0:c1].reshape(batch * kv_heads, group * n, head_dim),
                  kf[:, k0:k1].transpose(1, 2), out=scores)
        if softcap is not None:
            scores.div_(softcap).tanh_().mul_(softcap)
        if keep is not None:  # the block-sparse edit: the dropped blocks' keys become invisible
            dropped = ~keep_grid.expand(keep, torch.arange(c0, c1))[..., k0:k1]
            scores.view(batch, heads, n, width).masked_fill_(dropped, -math.inf)
        args.scores, args.rows, args.width, args.n_queries = scores.data_ptr(), batch * heads * n, width, n
        args.first_query, args.first_key, args.out_offset = c0 + offset, k0, c0
        if rows_pass(args):
            raise MemoryError("no memory for the CPU row pass's buffers of `received`")
        if blind is not None:
            blind[:, :, c0:c1] = ~scores.view(batch, heads, n, width).any(-1)
        out[:, :, :, c0:c1] = torch.bmm(scores, vf[:, k0:k1]).view(batch, kv_heads, group, n, -1)
        if blocks:
            blocks.add(res, scores.view(batch, heads, n, width), c0, k0)
    out = _output_edits(out.view(batch, heads, lq, -1), vf.view(batch, kv_heads, lk, -1), edits, valid, offset,
                        blind)
    return out.to(q.dtype), {name: res[name] for name in stats}


def _workspace(n: int) -> torch.Tensor:
    """n float32 scores of this thread's chunk buffer, kept between calls (one per thread: calls from several
    threads never share it). A fresh buffer of tens of MiB per attention call leaves the C allocator holding
    freed heap in pieces: several hundred MiB of peak memory over a model's forward."""
    held = getattr(_THREAD, "scores", None)
    if held is None or held.numel() < n:
        _THREAD.scores = held = torch.empty(n, dtype=torch.float32)
    return held[:n]


def _key_range(q0: int, q1: int, lk: int, causal: bool, window: int | None) -> tuple[int, int]:
    """Keys [k0, k1) that the queries at key positions [q0, q1) may see: all the chunk's rows read only these."""
    k0 = 0 if window is None else max(0, q0 - window + 1)
    k1 = q1 if causal else lk if window is None else min(lk, q1 - 1 + window)
    return k0, k1


def _dense_bias(edits: HeadEdits, valid, start: torch.Tensor, batch: int, lk: int) -> torch.Tensor:
    """[B, Hq, Lk] float32: the key-bias edit at each sequence's bias keys (counted from its first real key)."""
    bias = torch.zeros(batch, edits.key_bias.shape[0], lk, dtype=torch.float32)
    for n, key in enumerate(edits.bias_keys.tolist()):
        for b in range(batch):
            position = int(start[b]) + key
            if 0 <= key and position < lk and (valid is None or valid[b, position]):
                bias[b, :, position] += edits.key_bias[:, n].float().cpu()
    return bias


def _output_edits(out: torch.Tensor, v: torch.Tensor, edits: HeadEdits, valid, offset: int,
                  blind: torch.Tensor | None) -> torch.Tensor:
    """The identity mix (1 - a) out_i + a v_i on rows that see a key (not padding, not `blind` [B, Hq, Lq]: left
    with no key by a block mask), then the gate, per query head."""
    if edits.identity_mix is not None:
        a = edits.identity_mix.to(torch.float32)[None, :, None, None]
        v_self = v[:, :, offset:].repeat_interleave(out.shape[1] // v.shape[1], dim=1)
        mixed = (1 - a) * out + a * v_self
        out = mixed if valid is None else torch.where(valid[:, None, offset:, None].bool(), mixed, out)
        if blind is not None:
            out = torch.where(blind[..., None], 0.0, out)
    if edits.gate is not None:
        out = out * edits.gate.to(torch.float32)[None, :, None, None]
    return out


def _pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()
