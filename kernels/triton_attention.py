"""Launch the fused Triton kernels: `attention(...)` with the arguments and results of `workbench.kernels.reference`.

On CUDA the block sizes are autotuned over a small Hopper-minded space, keyed by the lengths rounded up to
powers of two (see `_pinned_configuration` for the environment variables that fix one configuration);
under TRITON_INTERPRET=1 (CPU tests) 16 x 16 blocks run.
On Hopper and later, inputs whose base and strides are 16-byte aligned are read through tensor descriptors
(WORKBENCH_TRITON_TMA=0 turns them off); other inputs and GPUs take pointer loads. Causal self-attention on
Hopper takes the warp-specialized forward and `received` pass of `workbench.kernels.gluon_attention` instead of the
Triton ones (WORKBENCH_GLUON=0 keeps the Triton ones).
fp16 / bf16 / fp32 inputs, fp32 accumulation; fp32 inputs use IEEE products (no TF32), so the kernel can be
held to the fp32 reference.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from workbench.kernels import gluon_attention
from workbench.kernels.contract import (
    BLOCK_STATS,
    DEFAULT_BLOCK_SIZE,
    HeadEdits,
    check_block_size,
    check_distance_cap,
    check_shapes,
    check_stats,
    n_blocks,
    sink_logits,
)
from workbench.kernels.triton_forward import stats_forward
from workbench.kernels.triton_received import received_pass

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
TMA_ALLOWED = os.environ.get("WORKBENCH_TRITON_TMA", "1") != "0"  # 0: pointer loads even on Hopper
_DESCRIPTORS = {"DescQ": "BLOCK_M", "DescK": "BLOCK_N", "DescV": "BLOCK_N"}  # kernel argument: rows of its tile


def _descriptor_blocks(nargs: dict) -> None:
    """Autotune pre-hook: give the tensor descriptors among the arguments the tile of this configuration."""
    for name, rows in _DESCRIPTORS.items():
        desc = nargs.get(name)
        if isinstance(desc, TensorDescriptor):
            desc.block_shape = [1, 1, nargs[rows], nargs["BLOCK_D"]]


# The autotune space: BLOCK_M, BLOCK_N, num_warps, num_stages. One warpgroup of 4 warps over 64 rows with at
# most ~107 KB of shared memory lets two programs share a Hopper multiprocessor: each waits at its own barriers,
# so one's softmax runs while the other's matrix products do (with 8 warps in one program, the CTA-wide barriers
# of the loop keep both warpgroups in step). 64 x 128 and 64 x 64 tiles win at head_dim 64 and 128 on the H200
# (benchmarks/NOTES.md); the smaller tiles suit GPUs with less shared memory.
CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=_descriptor_blocks)
    for bm, bn, w, s in [(64, 128, 4, 3), (64, 128, 4, 2), (64, 64, 4, 3), (64, 64, 4, 2), (128, 128, 8, 3),
                         (128, 64, 8, 3), (128, 64, 4, 3), (64, 32, 4, 2)]
]
# lengths enter the key rounded up to powers of two: a new prompt length does not re-tune
_KEY = ["tune_lq", "tune_lk", "HEAD_DIM", "CAUSAL", "WINDOW", "ENTROPY", "SINK", "MAX", "DISTANCE", "SELF", "PADDED",
        "REDIST", "REST_TARGETS", "TMA", "FOLD", "SINK_LOGIT", "BLOCK_KEEP"]
_RECEIVED_KEY = ["tune_lq", "tune_lk", "HEAD_DIM", "CAUSAL", "WINDOW", "PADDED", "REDIST", "REST_TARGETS", "TMA",
                 "RECEIVED",
                 "BLOCK_MASS", "BLOCK_MAX", "BLOCK_KEEP"]


def _pinned_configuration(variable: str = "WORKBENCH_TRITON_CONFIG") -> dict | None:
    """The one configuration every launch of a kernel uses, or None to autotune over CONFIGS.

    The interpreter runs 16 x 16 blocks; WORKBENCH_TRITON_CONFIG="BLOCK_M,BLOCK_N,num_warps,num_stages" pins
    a configuration (a GPU the autotune space does not suit, a benchmark's parallel precompilation), and a
    fifth number caps the registers a thread (Triton's maxnreg: more programs per multiprocessor, at the
    price of spills). WORKBENCH_TRITON_RECEIVED_CONFIG, in the same form, pins the `received` pass apart
    (a key-major pass without an output tile, whose best tiles differ); without it that pass takes
    WORKBENCH_TRITON_CONFIG. WORKBENCH_TRITON_AUTOTUNE=0 pins 64 x 64 blocks (GPU tests, which would
    otherwise compile every configuration of every case).
    """
    if INTERPRET:
        return {"BLOCK_M": 16, "BLOCK_N": 16}
    pinned = os.environ.get(variable)
    if pinned:
        fields = pinned.split(",")
        if len(fields) not in (4, 5) or not all(x.strip().isdigit() for x in fields):
            raise ValueError(f"{variable}={pinned!r}: expected BLOCK_M,BLOCK_N,num_warps,num_stages[,maxnreg] "
                             "as integers")
        block_m, block_n, warps, stages, *cap = (int(x) for x in fields)
        return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": warps, "num_stages": stages,
                **({"maxnreg": cap[0]} if cap else {})}
    if variable == "WORKBENCH_TRITON_RECEIVED_CONFIG":
        return _pinned_configuration()
    if os.environ.get("WORKBENCH_TRITON_AUTOTUNE", "1") == "0":
        return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    return None


PINNED = _pinned_configuration()
PINNED_RECEIVED = _pinned_configuration("WORKBENCH_TRITON_RECEIVED_CONFIG")
_forward = stats_forward if PINNED else triton.autotune(CONFIGS, key=_KEY)(stats_forward)
# the block statistics are atomic sums: every configuration the autotuner tries starts them from zero
_received_pass = received_pass if PINNED_RECEIVED else triton.autotune(
    CONFIGS, key=_RECEIVED_KEY, reset_to_zero=["BlockMass", "BlockMax"])(received_pass)


def _tile_rows(pinned: dict | None) -> tuple[int, int]:
    """The rows of the query and key tiles a descriptor carries: the pinned tiles', or placeholders that the
    autotuner's pre-hook replaces per configuration."""
    return (pinned["BLOCK_M"], pinned["BLOCK_N"]) if pinned else (16, 16)


def _use_tma(*tensors: torch.Tensor) -> bool:
    """Whether the kernels load through tensor descriptors (the bulk tensor copy engine): on Hopper and later
    (and in the interpreter, which emulates them), when every tensor's base and strides are 16-byte aligned."""
    if not TMA_ALLOWED:
        return False
    if not INTERPRET and torch.cuda.get_device_capability(tensors[0].device)[0] < 9:
        return False
    return all(t.data_ptr() % 16 == 0 and all(st > 0 and st * t.element_size() % 16 == 0 for st in t.stride()[:-1])
               and t.shape[-1] * t.element_size() >= 16 for t in tensors)


def _descriptor(t: torch.Tensor, rows: int, block_d: int) -> TensorDescriptor:
    """A descriptor of the [B, H, L, D] tensor t with tiles of `rows` rows of one (batch, head)."""
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, rows, block_d])


def _rest_of_sources(sources: torch.Tensor, targets: torch.Tensor, lk: int) -> bool:
    """Whether the redistribution's targets are every key position 0..lk-1 that is not a source (ACT's exact
    scaling; the two are disjoint, `HeadEdits.check`): the kernels then test a key against the sources only
    instead of walking a list as long as the input, which they unroll at compile time."""
    if sources.numel() + targets.numel() < lk:
        return False
    return bool(torch.isin(torch.arange(lk), torch.cat([sources, targets]).cpu()).all())


@functools.cache
def _on_device(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A small int32 tensor made once per device (no host-to-device copy on every attention call)."""
    return torch.tensor(values, device=device, dtype=torch.int32)


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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Fused attention with statistics; same contract, shapes and dtypes as `workbench.kernels.reference.attention`.

    q: [B, Hq, Lq, D]; k, v: [B, Hkv, Lk, D] (Hq a multiple of Hkv, K/V never repeated; the last dimension
    contiguous, any other strides). Returns out [B, Hq, Lq, D] in q's dtype and the requested statistics:
    per query [B, Hq, Lq] float32 (argmax_key int64), `received` [B, Hq, Lk] float32, the block statistics
    [B, Hq, ceil(Lq / block_size), ceil(Lk / block_size)] float32 (in the received pass, see
    `workbench.kernels.triton_blocks`). Only the requested statistics are computed: with stats=() this is a
    plain flash attention. Deciding whether `key_padding`
    pads anything reads it on the host (one synchronization); pass None when nothing is padded.
    """
    stats = check_stats(stats)
    block_size = check_block_size(block_size)
    distance_cap = check_distance_cap(distance_cap)
    edits = edits or HeadEdits()
    batch, n_heads, lq, head_dim = q.shape
    kv_heads, lk = k.shape[1], k.shape[2]
    check_shapes(q, k, key_padding)
    if v.shape[-1] != head_dim:
        raise ValueError(f"value head_dim {v.shape[-1]} differs from query head_dim {head_dim}")
    edits.check(n_heads, lq, lk, batch)
    device = q.device
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    padded = key_padding is not None and not bool(key_padding.all())
    if padded:
        valid = key_padding.to(device=device, dtype=torch.int8).contiguous()
        start = torch.where(valid.any(-1), valid.argmax(-1), lk).to(torch.int32)
    else:
        valid = torch.empty(1, dtype=torch.int8, device=device)
        start = torch.zeros(batch, dtype=torch.int32, device=device)

    f32 = dict(device=device, dtype=torch.float32)
    dummy = torch.empty(1, **f32)
    per_query = lambda: torch.empty(batch, n_heads, lq, **f32)  # noqa: E731
    want_max = "max_prob" in stats or "argmax_key" in stats
    res = {name: per_query() for name in ("lse", "entropy", "sink_mass", "window_distance", "self_mass",
                                          "learned_sink_mass") if name in stats}
    if want_max:
        res["max_prob"] = per_query()
        res["argmax_key"] = torch.empty(batch, n_heads, lq, device=device, dtype=torch.int64)
    redist = edits.redistribute is not None
    second_pass = "received" in stats or any(name in stats for name in BLOCK_STATS)
    # the received pass's per-row numbers: row max, log2 of row sum, and the redistribution's keep and boost
    norm = (per_query(), per_query()) if second_pass else (dummy, dummy)
    factors = (per_query(), per_query()) if second_pass and redist else (dummy, dummy)
    out = torch.empty_like(q)

    sink_positions = _on_device(tuple(sink_keys) or (-(1 << 30),), device)
    key_bias = dummy if edits.key_bias is None else edits.key_bias.to(**f32).contiguous()
    bias_keys = dummy if edits.bias_keys is None else edits.bias_keys.to(device=device, dtype=torch.int32)
    temperature = dummy if edits.temperature is None else edits.temperature.to(**f32).contiguous()
    gate = dummy if edits.gate is None else edits.gate.to(**f32).contiguous()
    mix = dummy if edits.identity_mix is None else edits.identity_mix.to(**f32).contiguous()
    fraction = edits.redistribute.to(**f32).contiguous() if redist else dummy
    sink_logit = sink_logits(None if sinks is None else sinks.detach(), edits, n_heads, torch.float32, device)
    source_keys, target_keys = (edits.source_keys.to(device=device, dtype=torch.int32), edits.target_keys.to(
        device=device, dtype=torch.int32)) if redist else (dummy, dummy)
    rest = redist and _rest_of_sources(edits.source_keys, edits.target_keys, lk)
    sparse = edits.block_keep is not None
    block_keep = edits.block_keep.to(device=device, dtype=torch.int8).contiguous() if sparse else valid
    keep_size = edits.keep_block_size or DEFAULT_BLOCK_SIZE
    block_d = max(16, triton.next_power_of_2(head_dim))
    tma = _use_tma(q, k, v)
    flags = dict(
        HEAD_DIM=head_dim, BLOCK_D=block_d, CAUSAL=causal, TMA=tma, BLOCK_KEEP=sparse,
        WINDOW=window is not None, SOFTCAP=softcap is not None, PADDED=padded,
        TEMPERATURE=edits.temperature is not None, N_BIAS=0 if edits.key_bias is None else edits.bias_keys.numel(),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", REDIST=redist,
        N_SOURCE=edits.source_keys.numel() if redist else 0,
        N_TARGET=edits.target_keys.numel() if redist and not rest else 0, REST_TARGETS=rest,
    )
    scalars = dict(n_heads=n_heads, group=n_heads // kv_heads, lq=lq, lk=lk,
                   scale=head_dim ** -0.5 if scale is None else float(scale),
                   softcap=float(softcap or 1.0), window=int(window or 0),
                   keep_size=keep_size, keep_nq=n_blocks(lq, keep_size), keep_nk=n_blocks(lk, keep_size),
                   keep_batches=edits.block_keep.shape[1] if sparse else 1,
                   tune_lq=triton.next_power_of_2(lq), tune_lk=triton.next_power_of_2(lk))

    def query_grid(meta):
        return triton.cdiv(lq, meta["BLOCK_M"]), batch * n_heads

    fold = softcap is None and edits.key_bias is None and edits.temperature is None and not redist
    fold = fold and scalars["scale"] > 0 and not sparse  # the block-sparse edit masks edited logits
    plain = fold and edits.is_identity() and not padded and window is None and sink_logit is None
    gluon_views = gluon_attention.applies(q, k, v, causal=causal, plain=plain, inputs_interpreted=INTERPRET)
    gluon_ran = bool(gluon_views) and gluon_attention.forward(
        gluon_views, q.shape, k.shape[1], out, res, norm if second_pass else None, scale=scalars["scale"],
        sink_positions=sink_positions, distance_cap=distance_cap)
    if not gluon_ran:
        if tma:  # tiles as pinned, or set per configuration by the autotuner's pre-hook
            rows_m, rows_n = _tile_rows(PINNED)
            desc_q, desc_k, desc_v = (_descriptor(t, rows, block_d)
                                      for t, rows in ((q, rows_m), (k, rows_n), (v, rows_n)))
        else:
            desc_q, desc_k, desc_v = q, k, v
        _forward[query_grid](
            q, k, v, desc_q, desc_k, desc_v, out, valid, start, sink_positions, temperature, key_bias, bias_keys, gate,
            mix,
            fraction, source_keys, target_keys,
            res.get("lse", dummy), res.get("entropy", dummy), res.get("sink_mass", dummy), res.get("max_prob", dummy),
            res.get("argmax_key", dummy), res.get("window_distance", dummy), res.get("self_mass", dummy), *norm,
            *factors,
            dummy if sink_logit is None else sink_logit, res.get("learned_sink_mass", dummy), block_keep,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
            distance_cap=float(distance_cap or 0), GATE=edits.gate is not None, MIX=edits.identity_mix is not None,
            N_SINK=max(1, len(sink_keys)), LSE="lse" in stats, NORM=second_pass, ENTROPY="entropy" in stats,
            SINK="sink_mass" in stats, MAX=want_max, DISTANCE="window_distance" in stats, SELF="self_mass" in stats,
            CAP=distance_cap is not None, FOLD=fold, SINK_LOGIT=sink_logit is not None,
            LEARNED_MASS="learned_sink_mass" in stats,
            **scalars, **flags, **(PINNED or {}),
        )
    if second_pass:
        n_qb, n_kb = n_blocks(lq, block_size), n_blocks(lk, block_size)
        for name in ("received", *BLOCK_STATS):
            if name in stats:
                res[name] = (torch.empty(batch, n_heads, lk, **f32) if name == "received" else
                             torch.zeros(batch, n_heads, n_qb, n_kb, **f32))
        if gluon_ran and not any(name in stats for name in BLOCK_STATS) and gluon_attention.received(
                gluon_views, q.shape, k.shape[1], norm, res["received"], scale=scalars["scale"]):
            return out, {name: res[name] for name in stats}

        def key_grid(meta):
            return triton.cdiv(lk, meta["BLOCK_N"]), batch * n_heads

        if tma:  # own descriptors: the forward's carry the forward's tiles
            rows_m, rows_n = _tile_rows(PINNED_RECEIVED)
            desc_q, desc_k = _descriptor(q, rows_m, block_d), _descriptor(k, rows_n, block_d)
        else:
            desc_q, desc_k = q, k
        _received_pass[key_grid](
            q, k, desc_q, desc_k, valid, start, temperature, key_bias, bias_keys, *norm, res.get("received", dummy),
            source_keys, target_keys, *factors, res.get("block_mass", dummy), res.get("block_max", dummy), block_keep,
            *q.stride()[:3], *k.stride()[:3], block_size=block_size, n_qb=n_qb, n_kb=n_kb, **scalars, **flags,
            RECEIVED="received" in stats, BLOCK_MASS="block_mass" in stats, BLOCK_MAX="block_max" in stats,
            **(PINNED_RECEIVED or {}),
        )
    return out, {name: res[name] for name in stats}
