"""Attention with statistics in plain PyTorch, by chunks of queries: the oracle every kernel is tested against.

It implements `workbench.kernels.contract` literally (entropy as -sum p log p, not the one-pass identity the fused
kernels use), in float32 (float64 for float64 inputs), so it also serves as the CPU backend of the tracer.
Memory is O(batch x heads x chunk x Lk): the full [batch, head, q, k] map is never held unless it is small
enough to fit one chunk. Grouped-query attention reads each K/V head once per group, without repeating it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workbench.kernels.contract import (
    DEFAULT_BLOCK_SIZE,
    QUERY_STATS,
    HeadEdits,
    check_block_size,
    check_distance_cap,
    check_shapes,
    check_stats,
    n_blocks,
    sink_logits,
)

CHUNK_ELEMENTS = 1 << 24  # score elements per chunk: 64 MiB in float32


@dataclass
class _Layout:
    """What every chunk needs: shapes, masks and per-key tensors, computed once per call."""

    batch: int
    kv_heads: int
    group: int
    lq: int
    lk: int
    offset: int  # query i sits at key position i + offset
    scale: float
    causal: bool
    window: int | None
    softcap: float | None
    valid_k: torch.Tensor  # [B, Lk] bool
    start: torch.Tensor  # [B] first real key
    key_bias: torch.Tensor | None  # [B, Hq, Lk] additive logit bias, or None
    temperature: torch.Tensor | None  # [Hq]
    fraction: torch.Tensor | None  # [Hq] redistributed fraction, or None
    source: torch.Tensor | None  # [B, Lk] bool: the redistribution's source keys
    target: torch.Tensor | None  # [B, Lk] bool: its target keys
    keep: torch.Tensor | None  # [Hq, 1 or B, nq, nk] bool: the block-sparse edit's kept blocks, or None
    keep_grid: BlockGrid | None  # the blocks of `keep`
    sink_logit: torch.Tensor | None  # [Hq] the learned sinks' edited logits, or None

    @property
    def heads(self) -> int:
        return self.kv_heads * self.group


def _layout(q, k, *, causal, scale, softcap, window, key_padding, edits, sinks) -> _Layout:
    check_shapes(q, k, key_padding)
    batch, n_q_heads, lq, head_dim = q.shape
    kv_heads, lk = k.shape[1], k.shape[2]
    if key_padding is None:
        valid_k = torch.ones(batch, lk, dtype=torch.bool, device=q.device)
    else:
        valid_k = key_padding.to(device=q.device, dtype=torch.bool)
    start = torch.where(valid_k.any(-1), valid_k.int().argmax(-1), torch.full_like(valid_k[:, 0], lk, dtype=torch.long))
    edits = edits or HeadEdits()
    edits.check(n_q_heads, lq, lk, batch)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    rel = torch.arange(lk, device=q.device)[None, :] - start[:, None]  # [B, Lk]

    def at(keys: torch.Tensor) -> torch.Tensor:  # [B, n, Lk]: key position n of each sequence
        return (rel[:, None, :] == keys.to(q.device)[None, :, None]) & valid_k[:, None, :]

    bias = None
    if edits.key_bias is not None:
        bias = torch.einsum("hn,bnk->bhk", edits.key_bias.to(q.device, cdt), at(edits.bias_keys).to(cdt))
    redistributing = edits.redistribute is not None
    return _Layout(
        batch=batch, kv_heads=kv_heads, group=n_q_heads // kv_heads, lq=lq, lk=lk, offset=lk - lq,
        scale=1.0 / math.sqrt(head_dim) if scale is None else float(scale), causal=causal, window=window,
        softcap=softcap, valid_k=valid_k, start=start, key_bias=bias,
        temperature=None if edits.temperature is None else edits.temperature.to(q.device, cdt),
        fraction=edits.redistribute.to(q.device, cdt) if redistributing else None,
        source=at(edits.source_keys).any(1) if redistributing else None,
        target=at(edits.target_keys).any(1) if redistributing else None,
        keep=None if edits.block_keep is None else edits.block_keep.to(q.device),
        keep_grid=None if edits.block_keep is None else BlockGrid.of(start, lq, lk, edits.keep_block_size),
        sink_logit=sink_logits(sinks, edits, n_q_heads, cdt, q.device),
    )


def _visible(lay: _Layout, qpos: torch.Tensor) -> torch.Tensor:
    """[B, 1, C, Lk] bool: which keys each query row (absolute key positions `qpos`) may see."""
    kpos = torch.arange(lay.lk, device=qpos.device)
    diff = qpos[:, None] - kpos[None, :]  # [C, Lk]
    allowed = torch.ones_like(diff, dtype=torch.bool)
    if lay.causal:
        allowed &= diff >= 0
    if lay.window is not None:
        allowed &= diff.abs() < lay.window
    query_real = lay.valid_k[:, qpos]  # [B, C]: padding queries see nothing
    return allowed[None, None] & lay.valid_k[:, None, None, :] & query_real[:, None, :, None]


def _scores(lay: _Layout, qc: torch.Tensor, k: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
    """Edited, masked logits [B, Hq, C, Lk] (-inf where a key is not visible) for a chunk of queries."""
    batch, chunk = qc.shape[0], qc.shape[2]
    qg = qc.reshape(batch, lay.kv_heads, lay.group, chunk, -1)
    s = torch.einsum("bkgcd,bkld->bkgcl", qg, k).reshape(batch, lay.heads, chunk, lay.lk) * lay.scale
    if lay.softcap is not None:
        s = lay.softcap * torch.tanh(s / lay.softcap)
    if lay.temperature is not None:
        s = s / lay.temperature[None, :, None, None]
    if lay.key_bias is not None:
        s = s + lay.key_bias[:, :, None, :]
    s = s.masked_fill(~_visible(lay, qpos), float("-inf"))
    if lay.keep is not None:
        s = s.masked_fill(~lay.keep_grid.expand(lay.keep, qpos - lay.offset), float("-inf"))
    return s


def _probabilities(s: torch.Tensor, sink_logit: torch.Tensor | None = None):
    """(p, lse, row_ok, sink_p) from masked logits [B, Hq, C, Lk] and the learned sink logits [Hq] (or None):
    the sink joins each row's denominator, sink_p [B, Hq, C] is its share (0 without sinks). Rows with no visible
    key get p = 0, lse = NaN, sink_p = NaN, row_ok = False."""
    m = s.amax(-1, keepdim=True)
    row_ok = torch.isfinite(m)
    if sink_logit is not None:
        m = torch.where(row_ok, torch.maximum(m, sink_logit[None, :, None, None]), m)
    m0 = torch.where(row_ok, m, torch.zeros_like(m))
    e = torch.exp(s - m0)
    sink_e = torch.zeros_like(m) if sink_logit is None else torch.exp(sink_logit[None, :, None, None] - m0)
    denom = e.sum(-1, keepdim=True) + sink_e
    p = torch.where(row_ok, e / denom.clamp_min(torch.finfo(s.dtype).tiny), torch.zeros_like(e))
    nan = torch.full_like(m, float("nan"))
    lse = torch.where(row_ok, m + torch.log(denom), nan)
    sink_p = torch.where(row_ok, sink_e / denom.clamp_min(torch.finfo(s.dtype).tiny), nan)
    return p, lse.squeeze(-1), row_ok.squeeze(-1), sink_p.squeeze(-1)


def _redistribute(lay: _Layout, p: torch.Tensor) -> torch.Tensor:
    """The map p [B, Hq, C, Lk] after the VAR redistribution of `workbench.kernels.contract.HeadEdits` (p if none)."""
    if lay.fraction is None:
        return p
    source, target = lay.source[:, None, None, :], lay.target[:, None, None, :]
    moved = (p * source).sum(-1, keepdim=True)  # S_i
    held = (p * target).sum(-1, keepdim=True)  # T_i
    f = torch.where(held > 0, lay.fraction[None, :, None, None], torch.zeros_like(held))
    boost = 1 + f * moved / held.clamp_min(torch.finfo(p.dtype).tiny)
    return p * torch.where(source, 1 - f, torch.where(target, boost, torch.ones_like(boost)))


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
    """Attention output and the requested statistics of `workbench.kernels.contract`, computed chunk by chunk.

    q: [B, Hq, Lq, D]; k: [B, Hkv, Lk, D]; v: [B, Hkv, Lk, Dv] with Hq a multiple of Hkv (GQA).
    causal: bottom-right aligned causal mask. window: keys with |i - j| < window stay visible (HF's
    sliding_window). key_padding: [B, Lk] bool, True for real tokens. softcap: logits -> c * tanh(s / c).
    block_size: positions per block of `block_mass` / `block_max`.
    sinks: [Hq] learned sink logits (GPT-OSS), which join every row's softmax denominator, or None.
    Returns out [B, Hq, Lq, Dv] in q's dtype, and a dict: query statistics [B, Hq, Lq] (float32, argmax_key
    int64), `received` [B, Hq, Lk] float32 and the block statistics [B, Hq, ceil(Lq / block_size),
    ceil(Lk / block_size)] float32.
    """
    stats = check_stats(stats)
    block_size = check_block_size(block_size)
    distance_cap = check_distance_cap(distance_cap)
    edits = edits or HeadEdits()
    lay = _layout(q, k, causal=causal, scale=scale, softcap=softcap, window=window,
                  key_padding=key_padding, edits=edits, sinks=sinks)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = q.to(cdt), k.to(cdt), v.to(cdt)
    batch, heads, lq, lk = lay.batch, lay.heads, lay.lq, lay.lk
    chunk = chunk_size or max(1, min(lq, CHUNK_ELEMENTS // max(1, batch * heads * lk)))

    kpos = torch.arange(lk, device=q.device)
    rel_k = kpos[None, :] - lay.start[:, None]  # [B, Lk]
    sink = torch.isin(rel_k, torch.tensor(list(sink_keys), device=q.device, dtype=torch.long)) & lay.valid_k
    out = torch.empty(batch, heads, lq, v.shape[-1], dtype=cdt, device=q.device)
    res = {name: torch.empty(batch, heads, lq, dtype=torch.float32, device=q.device) for name in stats
           if name in QUERY_STATS and name != "argmax_key"}
    if "argmax_key" in stats:
        res["argmax_key"] = torch.empty(batch, heads, lq, dtype=torch.long, device=q.device)
    if "received" in stats:
        res["received"] = torch.zeros(batch, heads, lk, dtype=torch.float32, device=q.device)
    blocks = BlockGrid.of(lay.start, lq, lk, block_size) if {"block_mass", "block_max"} & set(stats) else None
    block_res = blocks.empty(stats, heads, cdt) if blocks else {}

    for c0 in range(0, lq, chunk):
        c1 = min(lq, c0 + chunk)
        qpos = torch.arange(c0, c1, device=q.device) + lay.offset
        p, lse, row_ok, sink_p = _probabilities(_scores(lay, qf[:, :, c0:c1], kf, qpos), lay.sink_logit)
        p = _redistribute(lay, p)
        pg = p.reshape(batch, lay.kv_heads, lay.group, c1 - c0, lk)
        o = torch.einsum("bkgcl,bkld->bkgcd", pg, vf).reshape(batch, heads, c1 - c0, -1)
        if edits.identity_mix is not None:
            a = edits.identity_mix.to(q.device, cdt)[None, :, None, None]
            v_self = vf[:, :, qpos].repeat_interleave(lay.group, dim=1)
            o = torch.where(row_ok[..., None], (1 - a) * o + a * v_self, o)
        if edits.gate is not None:
            o = o * edits.gate.to(q.device, cdt)[None, :, None, None]
        out[:, :, c0:c1] = o
        nan = torch.full_like(lse, float("nan"))
        if "lse" in res:
            res["lse"][:, :, c0:c1] = lse
        if "entropy" in res:
            res["entropy"][:, :, c0:c1] = torch.where(row_ok, -torch.xlogy(p, p).sum(-1), nan)
        if "sink_mass" in res:
            res["sink_mass"][:, :, c0:c1] = torch.where(row_ok, (p * sink[:, None, None, :]).sum(-1), nan)
        if "max_prob" in res or "argmax_key" in res:
            top, arg = p.max(-1)
            if "max_prob" in res:
                res["max_prob"][:, :, c0:c1] = torch.where(row_ok, top, nan)
            if "argmax_key" in res:
                rel_arg = arg - lay.start[:, None, None]
                res["argmax_key"][:, :, c0:c1] = torch.where(row_ok, rel_arg, torch.full_like(arg, -1))
        if "window_distance" in res:
            dist = (qpos[:, None] - kpos[None, :]).abs().to(cdt)
            if distance_cap is not None:
                dist = dist.clamp_max(distance_cap)
            res["window_distance"][:, :, c0:c1] = torch.where(row_ok, (p * dist).sum(-1), nan)
        if "self_mass" in res:
            own = p[:, :, torch.arange(c1 - c0, device=q.device), qpos]  # [B, Hq, C]: p at the row's own key
            res["self_mass"][:, :, c0:c1] = torch.where(row_ok, own, nan)
        if "learned_sink_mass" in res:
            res["learned_sink_mass"][:, :, c0:c1] = sink_p
        if "received" in res:
            res["received"] += p.sum(2).float()
        if blocks:
            blocks.add(block_res, p, c0, 0)
    res |= {name: value.float() for name, value in block_res.items()}
    return out.to(q.dtype), {name: res[name] for name in stats}


@dataclass
class BlockGrid:
    """Which block each query row and key falls in, per sequence (see `workbench.kernels.contract`).

    q_block [B, Lq] and k_block [B, Lk] count from each sequence's first real query row and key; positions of
    padding, whose p is 0, are put in block 0.
    """

    q_block: torch.Tensor
    k_block: torch.Tensor
    n_q: int
    n_k: int

    @classmethod
    def of(cls, start: torch.Tensor, lq: int, lk: int, block_size: int) -> BlockGrid:
        """The grid of a batch whose sequences' first real keys are `start` [B] (queries: the last lq keys)."""
        first_row = (start - (lk - lq)).clamp_min(0)
        rows = torch.arange(lq, device=start.device)[None, :] - first_row[:, None]
        keys = torch.arange(lk, device=start.device)[None, :] - start[:, None]
        return cls(q_block=rows.clamp_min(0) // block_size, k_block=keys.clamp_min(0) // block_size,
                   n_q=n_blocks(lq, block_size), n_k=n_blocks(lk, block_size))

    def expand(self, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[B, Hq, C, Lk]: a block mask [Hq, 1 or B, n_q, n_k] at query rows `rows` [C] and every key."""
        per_sequence = [mask[:, b if mask.shape[1] > 1 else 0][:, self.q_block[b, rows]][:, :, self.k_block[b]]
                        for b in range(self.q_block.shape[0])]
        return torch.stack(per_sequence)

    def empty(self, stats, heads: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Zeroed [B, Hq, n_q, n_k] accumulators of the block statistics named in `stats`."""
        shape = (self.q_block.shape[0], heads, self.n_q, self.n_k)
        return {name: torch.zeros(shape, dtype=dtype, device=self.q_block.device) for name in stats
                if name in ("block_mass", "block_max")}

    def add(self, res: dict[str, torch.Tensor], p: torch.Tensor, row0: int, key0: int) -> None:
        """Fold p [B, Hq, C, W] of query rows row0.. and keys key0.. into the accumulators `res` (sum, max)."""
        rows, cols = slice(row0, row0 + p.shape[2]), slice(key0, key0 + p.shape[3])
        for b in range(p.shape[0]):
            q_block, k_block = self.q_block[b, rows], self.k_block[b, cols]
            pb = p[b].to(res["block_mass" if "block_mass" in res else "block_max"].dtype)
            if "block_mass" in res:
                per_key = pb.new_zeros(*pb.shape[:2], self.n_k).index_add_(-1, k_block, pb)
                res["block_mass"][b].index_add_(1, q_block, per_key)
            if "block_max" in res:
                per_key = pb.new_zeros(*pb.shape[:2], self.n_k).scatter_reduce_(-1, k_block.expand_as(pb), pb, "amax")
                res["block_max"][b].scatter_reduce_(1, q_block[None, :, None].expand_as(per_key), per_key, "amax")


def attention_pattern(
    q: torch.Tensor,
    k: torch.Tensor,
    heads: Sequence[int],
    span: tuple[int, int],
    *,
    causal: bool = True,
    scale: float | None = None,
    softcap: float | None = None,
    window: int | None = None,
    key_padding: torch.Tensor | None = None,
    edits: HeadEdits | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attention map of query heads `heads` over the key positions span = (start, stop): [B, n, span, span].

    Rows are the queries at key positions start..stop-1 and columns the keys there; each row is the exact
    softmax over all keys the query may see (after every edit of `edits`; not renormalized to the span), so
    rows may sum to less than 1 (also over all keys, with learned `sinks`).
    Only the span's rows are computed: memory O(B x Hq x span x Lk).
    """
    lay = _layout(q, k, causal=causal, scale=scale, softcap=softcap, window=window,
                  key_padding=key_padding, edits=edits, sinks=sinks)
    start, stop = span
    if not 0 <= start < stop <= lay.lk or start < lay.offset:
        raise ValueError(f"pattern span {span} is outside the query positions {lay.offset}..{lay.lk}")
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    qpos = torch.arange(start, stop, device=q.device)
    s = _scores(lay, q[:, :, start - lay.offset:stop - lay.offset].to(cdt), k.to(cdt), qpos)
    p = _redistribute(lay, _probabilities(s, lay.sink_logit)[0])
    return p[:, list(heads), :, start:stop].float()
