"""workbench.kernels.reference against a brute-force softmax over the full [q, k] map, in float64.

The brute force builds the whole score matrix, applies every mask and edit by its definition and reads each
statistic off the materialized probabilities. Tolerances: the output 1e-10 for float64 inputs (both exact up
to rounding); statistics are stored in float32 by contract, so they are held to float32 rounding (rtol = atol
= 1e-6); for float32 / bfloat16 / float16 inputs the reference (which computes in float32) is held to 1e-5 on
the statistics against the brute force run on the same rounded inputs, and to the output dtype's rounding.
"""

import itertools
import math

import pytest
import torch

from workbench.kernels import ALL_STATS, HeadEdits
from workbench.kernels.reference import attention, attention_pattern


def brute_force(q, k, v, *, causal=True, scale=None, softcap=None, window=None, key_padding=None,
                sink_keys=(0,), distance_cap=None, edits=None, sinks=None):
    q, k, v = q.double(), k.double(), v.double()
    B, H, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    g = H // Hkv
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    scale = 1 / math.sqrt(D) if scale is None else scale
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    pad = torch.ones(B, Lk, dtype=torch.bool) if key_padding is None else key_padding
    start = pad.int().argmax(-1)
    rel = torch.arange(Lk)[None] - start[:, None]  # [B, Lk]
    edits = edits or HeadEdits()
    if edits.temperature is not None:
        s = s / edits.temperature.double()[None, :, None, None]
    if edits.key_bias is not None:
        for n, key in enumerate(edits.bias_keys.tolist()):
            s = s + edits.key_bias[:, n].double()[None, :, None, None] * (rel == key)[:, None, None, :]
    qabs = torch.arange(Lq) + (Lk - Lq)
    diff = qabs[:, None] - torch.arange(Lk)[None]
    allowed = torch.ones(Lq, Lk, dtype=torch.bool)
    if causal:
        allowed &= diff >= 0
    if window is not None:
        allowed &= diff.abs() < window
    allowed = allowed[None, None] & pad[:, None, None, :] & pad[:, qabs][:, None, :, None]
    if edits.block_keep is not None:  # query row i in block (i - first real row) // size, key j likewise
        allowed = allowed.repeat(1, H, 1, 1) if allowed.shape[1] == 1 else allowed
        size, keep = edits.keep_block_size, edits.block_keep
        for b in range(B):
            first_row = max(0, int(start[b]) - (Lk - Lq))
            for i, j in itertools.product(range(Lq), range(Lk)):
                a, c = max(0, i - first_row) // size, max(0, j - int(start[b])) // size
                allowed[b, :, i, j] &= keep[:, b if keep.shape[1] > 1 else 0, a, c]
    s = s.masked_fill(~allowed, -math.inf)
    ok = allowed.any(-1)
    if sinks is None:
        learned = torch.zeros(B, H, Lq, dtype=torch.float64)
        logits = s
    else:  # HF's eager GPT-OSS attention: the sink logit as one more column of the softmax, dropped after it
        u = sinks.double() / (1 if edits.temperature is None else edits.temperature.double())
        u = u + (0 if edits.sink_bias is None else edits.sink_bias.double())
        logits = torch.cat([s, u[None, :, None, None].expand(B, H, Lq, 1)], -1)
        full = torch.softmax(logits, -1)
        learned = full[..., -1]
    p = torch.softmax(logits, -1)[..., :Lk].where(ok[..., None], torch.zeros(())).nan_to_num(0.0)
    out = p @ v
    if edits.identity_mix is not None:
        a = edits.identity_mix.double()[None, :, None, None]
        out = torch.where(ok[..., None], (1 - a) * out + a * v[:, :, qabs], out)
    if edits.gate is not None:
        out = out * edits.gate.double()[None, :, None, None]
    logp = torch.where(p > 0, p.log(), torch.zeros_like(p))
    dist = diff.abs().double()
    if distance_cap is not None:
        dist = dist.clamp_max(distance_cap)
    sink = torch.zeros(B, Lk, dtype=torch.bool)
    for key in sink_keys:
        sink |= rel == key
    nan = torch.tensor(math.nan, dtype=torch.float64)
    stats = {
        "lse": torch.where(ok, torch.logsumexp(logits, -1), nan),
        "entropy": torch.where(ok, -(p * logp).sum(-1), nan),
        "sink_mass": torch.where(ok, (p * (sink & pad)[:, None, None, :]).sum(-1), nan),
        "max_prob": torch.where(ok, p.max(-1).values, nan),
        "argmax_key": torch.where(ok, p.argmax(-1) - start[:, None, None], -1),
        "window_distance": torch.where(ok, (p * dist).sum(-1), nan),
        "self_mass": torch.where(ok, p.diagonal(Lk - Lq, -2, -1), nan),
        "received": p.sum(2),
        "learned_sink_mass": torch.where(ok, learned, nan),
    }
    return out, stats, p


def rand_qkv(B=2, H=4, Hkv=2, Lq=13, Lk=13, D=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Lq, D, generator=g, dtype=torch.float64) * 1.5
    k = torch.randn(B, Hkv, Lk, D, generator=g, dtype=torch.float64) * 1.5
    v = torch.randn(B, Hkv, Lk, D, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def assert_stats_close(got, want, atol):
    for name, value in want.items():
        g = got[name]
        if name == "argmax_key":
            assert torch.equal(g, value.to(g.dtype)), name
        else:
            torch.testing.assert_close(g.double(), value.double(), atol=atol, rtol=atol, equal_nan=True, msg=name)


def padding(B, L, left, right):
    pad = torch.ones(B, L, dtype=torch.bool)
    pad[-1, :left] = False
    if right:
        pad[0, L - right:] = False
    return pad


CASES = {
    "causal": {},
    "bidirectional": {"causal": False},
    "left_padding": {"key_padding": padding(2, 13, 4, 0)},
    "right_padding": {"key_padding": padding(2, 13, 0, 3)},
    "both_padding_bidirectional": {"causal": False, "key_padding": padding(2, 13, 2, 3)},
    "sliding_window": {"window": 4},
    "softcap_scale": {"softcap": 5.0, "scale": 0.7},
    "sinks_and_cap": {"sink_keys": (0, 1, 5), "distance_cap": 3},
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunk", [1, 5, None])
def test_reference_matches_brute_force(case, chunk):
    q, k, v = rand_qkv()
    opts = CASES[case]
    out, stats = attention(q, k, v, stats=ALL_STATS, chunk_size=chunk, **opts)
    want_out, want, _ = brute_force(q, k, v, **opts)
    torch.testing.assert_close(out, want_out, atol=1e-10, rtol=0)
    assert_stats_close(stats, want, atol=1e-6)


@pytest.mark.parametrize("Hkv", [1, 2, 4])
def test_grouped_query_attention(Hkv):
    q, k, v = rand_qkv(H=4, Hkv=Hkv, seed=Hkv)
    out, stats = attention(q, k, v, stats=ALL_STATS)
    want_out, want, _ = brute_force(q, k, v)
    torch.testing.assert_close(out, want_out, atol=1e-10, rtol=0)
    assert_stats_close(stats, want, atol=1e-6)


@pytest.mark.parametrize("Lq", [1, 4])
def test_queries_against_a_longer_cache(Lq):
    q, k, v = rand_qkv(Lq=Lq, Lk=11, seed=3)
    for opts in ({}, {"window": 3}, {"key_padding": padding(2, 11, 3, 0)}):
        out, stats = attention(q, k, v, stats=ALL_STATS, **opts)
        want_out, want, _ = brute_force(q, k, v, **opts)
        torch.testing.assert_close(out, want_out, atol=1e-10, rtol=0)
        assert_stats_close(stats, want, atol=1e-6)


def test_edits_match_brute_force():
    q, k, v = rand_qkv(seed=7)
    edits = HeadEdits(
        temperature=torch.tensor([1.0, 0.5, 2.0, 1.3]),
        key_bias=torch.tensor([[0.0, 1.0], [-2.0, 0.5], [3.0, 0.0], [-1e4, 1.0]]),
        bias_keys=torch.tensor([0, 3]),
        gate=torch.tensor([1.0, 0.0, 2.0, 0.5]),
        identity_mix=torch.tensor([0.0, 0.3, 1.0, 0.5]),
    )
    pad = padding(2, 13, 3, 0)
    out, stats = attention(q, k, v, stats=ALL_STATS, edits=edits, key_padding=pad)
    want_out, want, _ = brute_force(q, k, v, edits=edits, key_padding=pad)
    torch.testing.assert_close(out, want_out, atol=1e-10, rtol=0)
    assert_stats_close(stats, want, atol=1e-6)
    assert out[:, 1].abs().max() == 0  # gate 0 ablates head 1


@pytest.mark.parametrize("case", ["causal", "left_padding", "bidirectional", "sliding_window", "softcap_scale"])
def test_learned_sinks_match_brute_force(case):
    """The sink logit as one more softmax column (HF's eager GPT-OSS attention), with every logit edit."""
    q, k, v = rand_qkv(seed=9)
    sinks = torch.tensor([-3.0, 0.5, 2.0, 60.0], dtype=torch.float64)
    edits = HeadEdits(temperature=torch.tensor([1.0, 0.5, 2.0, 1.3]), sink_bias=torch.tensor([0.0, 1.5, -1e4, -2.0]),
                      key_bias=torch.tensor([[1.0], [-2.0], [3.0], [0.5]]), bias_keys=torch.tensor([1]))
    for chosen in (HeadEdits(), edits):
        out, stats = attention(q, k, v, stats=ALL_STATS, edits=chosen, sinks=sinks, chunk_size=5, **CASES[case])
        want_out, want, p = brute_force(q, k, v, edits=chosen, sinks=sinks, **CASES[case])
        torch.testing.assert_close(out, want_out, atol=1e-10, rtol=0)
        assert_stats_close(stats, want, atol=1e-6)
        pattern = attention_pattern(q, k, range(4), (0, 13), edits=chosen, sinks=sinks, **{
            key: value for key, value in CASES[case].items() if key != "sink_keys"})
        torch.testing.assert_close(pattern.double(), p, atol=1e-6, rtol=0)
    assert stats["learned_sink_mass"][:, 2].nan_to_num().abs().max() == 0  # a sink bias of -1e4 removes it
    assert stats["learned_sink_mass"][:, 3].nanmean() > 0.99  # a sink logit of 60 takes nearly everything


def test_sink_bias_needs_learned_sinks():
    q, k, v = rand_qkv(seed=10)
    with pytest.raises(ValueError, match="has none"):
        attention(q, k, v, edits=HeadEdits(sink_bias=torch.zeros(4)))
    with pytest.raises(ValueError, match="one logit per query head"):
        attention(q, k, v, sinks=torch.zeros(2))


def test_identity_edits_change_nothing():
    q, k, v = rand_qkv(seed=8)
    ones, zeros = torch.ones(4), torch.zeros(4)
    plain, plain_stats = attention(q, k, v, stats=ALL_STATS)
    edited, edited_stats = attention(q, k, v, stats=ALL_STATS, edits=HeadEdits(
        temperature=ones, gate=ones, identity_mix=zeros, key_bias=torch.zeros(4, 1), bias_keys=torch.tensor([0])))
    torch.testing.assert_close(edited, plain, atol=1e-12, rtol=0)
    assert_stats_close(edited_stats, plain_stats, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    q, k, v = rand_qkv(dtype=dtype, seed=11)
    out, stats = attention(q, k, v, stats=ALL_STATS)
    assert out.dtype == dtype and stats["entropy"].dtype == torch.float32
    want_out, want, _ = brute_force(q, k, v)
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]  # output rounding
    torch.testing.assert_close(out.double(), want_out, atol=tol, rtol=0)
    assert_stats_close({n: s for n, s in stats.items() if n != "argmax_key"},
                       {n: s for n, s in want.items() if n != "argmax_key"}, atol=1e-5)


def test_pattern_matches_brute_force_rows():
    q, k, v = rand_qkv(seed=5)
    pad = padding(2, 13, 2, 0)
    got = attention_pattern(q, k, [3, 0], (4, 10), key_padding=pad, window=5)
    _, _, p = brute_force(q, k, v, key_padding=pad, window=5)
    torch.testing.assert_close(got.double(), p[:, [3, 0], 4:10, 4:10], atol=1e-6, rtol=0)


def test_bad_shapes_raise_clear_errors():
    q, k, v = rand_qkv(H=3, Hkv=2)
    with pytest.raises(ValueError, match="3 query heads"):
        attention(q, k, v)
    q, k, v = rand_qkv(Lq=5, Lk=4)
    with pytest.raises(ValueError, match="more queries"):
        attention(q, k, v)
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match="unknown statistic"):
        attention(q, k, v, stats=("entropy", "entropi"))
    with pytest.raises(ValueError, match="temperature has 2 heads"):
        attention(q, k, v, edits=HeadEdits(temperature=torch.ones(2)))


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


def test_composed_edits_act_like_applying_them_one_after_the_other():
    q, k, v = rand_qkv(seed=12)
    first = HeadEdits(temperature=f64([1.0, 2.0, 0.5, 1.0]), identity_mix=f64([0.0, 0.5, 0.2, 1.0]),
                      key_bias=f64([[1.0], [0.0], [-1.0], [2.0]]), bias_keys=torch.tensor([0]))
    second = HeadEdits(temperature=f64([3.0, 1.0, 1.0, 0.5]), identity_mix=f64([0.4, 0.5, 0.0, 0.3]),
                       key_bias=f64([[0.5, 1.0]] * 4), bias_keys=torch.tensor([0, 2]),
                       gate=f64([1.0, 0.0, 3.0, 1.0]))
    composed, _ = attention(q, k, v, edits=first.then(second))
    # one after the other: logits edited by both, output mixed by the first then the second, gated last
    logits_only = HeadEdits(temperature=first.temperature * second.temperature,
                            key_bias=f64([[1.5, 1.0], [0.5, 1.0], [-0.5, 1.0], [2.5, 1.0]]),
                            bias_keys=torch.tensor([0, 2]))
    plain, _ = attention(q, k, v, edits=logits_only)
    v_self = v.repeat_interleave(2, dim=1)
    a1, a2 = first.identity_mix[None, :, None, None], second.identity_mix[None, :, None, None]
    want = ((1 - a2) * ((1 - a1) * plain + a1 * v_self) + a2 * v_self) * second.gate[None, :, None, None]
    torch.testing.assert_close(composed, want, atol=1e-10, rtol=0)


def brute_force_blocks(p, key_padding, block_size):
    """block_mass and block_max [B, H, nq, nk] of the full map p [B, H, Lq, Lk], block by block, with the query
    and key blocks counted from each sequence's first real query row and key."""
    B, H, Lq, Lk = p.shape
    nq, nk = -(-Lq // block_size), -(-Lk // block_size)
    mass, top = torch.zeros(B, H, nq, nk, dtype=p.dtype), torch.zeros(B, H, nq, nk, dtype=p.dtype)
    for b in range(B):
        start = 0 if key_padding is None else int(key_padding[b].int().argmax())
        first_row = max(0, start - (Lk - Lq))
        for a in range(nq):
            rows = slice(first_row + a * block_size, first_row + (a + 1) * block_size)
            for c in range(nk):
                tile = p[b, :, rows, start + c * block_size:start + (c + 1) * block_size]
                if tile.numel():
                    mass[b, :, a, c], top[b, :, a, c] = tile.sum((-1, -2)), tile.amax((-1, -2))
    return mass, top


BLOCK_CASES = {
    "causal": ({}, {}),
    "bidirectional_window": ({}, {"causal": False, "window": 70}),
    "left_padding": ({}, {"key_padding": padding(2, 150, 37, 0)}),
    "right_padding_window": ({}, {"key_padding": padding(2, 150, 0, 20), "window": 90}),
    "one_kv_head": ({"Hkv": 1}, {}),
    "chunked_prefill": ({"Lq": 70}, {"key_padding": padding(2, 150, 100, 0)}),
    "decode": ({"Lq": 1}, {}),
    "edits": ({}, {"key_padding": padding(2, 150, 5, 0), "edits": HeadEdits(
        temperature=torch.tensor([1.0, 0.5, 2.0, 1.3]), key_bias=torch.tensor([[0.0, 1.0], [-2.0, 0.5], [3.0, 0.0],
                                                                                [-1e4, 1.0]]),
        bias_keys=torch.tensor([0, 70]), gate=torch.tensor([1.0, 0.0, 2.0, 0.5]),
        identity_mix=torch.tensor([0.0, 0.3, 1.0, 0.5]))}),
}


@pytest.mark.parametrize("block_size", [64, 100])
@pytest.mark.parametrize("case", sorted(BLOCK_CASES))
def test_block_statistics_match_brute_force(case, block_size):
    """block_mass / block_max against the full map summed block by block; each block row of block_mass sums to
    the number of real query rows in the block (every row of p sums to 1)."""
    shape, opts = BLOCK_CASES[case]
    q, k, v = rand_qkv(**{"Lq": 150, "Lk": 150, **shape}, seed=len(case))
    _, stats = attention(q, k, v, stats=("block_mass", "block_max"), block_size=block_size, chunk_size=33, **opts)
    _, _, p = brute_force(q, k, v, **opts)
    mass, top = brute_force_blocks(p, opts.get("key_padding"), block_size)
    assert stats["block_mass"].dtype == torch.float32
    torch.testing.assert_close(stats["block_mass"].double(), mass, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(stats["block_max"].double(), top, atol=1e-7, rtol=1e-6)
    real = p.sum(-1) > 0.5  # [B, H, Lq]: the rows that see a key (each sums to 1)
    pad = opts.get("key_padding")
    for b in range(2):
        start = 0 if pad is None else int(pad[b].int().argmax())
        first_row = max(0, start - (150 - q.shape[2]))
        for a in range(mass.shape[2]):
            n_real = real[b, :, first_row + a * block_size:first_row + (a + 1) * block_size].sum(-1).double()
            torch.testing.assert_close(stats["block_mass"][b, :, a].double().sum(-1), n_real, atol=1e-4, rtol=0)


@pytest.mark.parametrize("block_size", [32, 1025, 64.0, True])
def test_a_block_size_out_of_range_is_refused(block_size):
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match=f"block_size {block_size!r} must be an integer from 64 to 1024"):
        attention(q, k, v, stats=("block_mass",), block_size=block_size)


@pytest.mark.parametrize("cap", [0, -3, 2.5, True])
def test_a_distance_cap_below_one_token_is_refused(cap):
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match=f"distance_cap {cap!r} must be a positive integer"):
        attention(q, k, v, stats=("window_distance",), distance_cap=cap)


@pytest.mark.parametrize("case", ["causal", "left_padding", "chunked_prefill", "edits"])
def test_block_sparse_edit_matches_a_masked_brute_force(case):
    """HeadEdits.block_keep hides the dropped blocks' keys from the query block's rows before the softmax; every
    statistic describes the sparse map, and rows left with no key are NaN (out 0)."""
    shape, opts = BLOCK_CASES[case]
    q, k, v = rand_qkv(**{"Lq": 150, "Lk": 150, **shape}, seed=len(case) + 40)
    g = torch.Generator().manual_seed(len(case))
    per_sequence = 2 if case == "left_padding" else 1
    keep = torch.rand(4, per_sequence, -(-q.shape[2] // 64), 3, generator=g) < 0.6
    sparse = HeadEdits(block_keep=keep, keep_block_size=64)
    edits = sparse if "edits" not in opts else opts["edits"].then(sparse)
    opts = {**opts, "edits": edits}
    out, stats = attention(q, k, v, stats=ALL_STATS, chunk_size=40, block_size=64, **opts)
    want_out, want, p = brute_force(q, k, v, **opts)
    torch.testing.assert_close(out, want_out, atol=1e-10, rtol=0)
    assert_stats_close(stats, want, atol=1e-6)
    mass, _ = brute_force_blocks(p, opts.get("key_padding"), 64)
    torch.testing.assert_close(stats["block_mass"].double(), mass, atol=1e-5, rtol=1e-6)
    assert (mass[~keep.expand(4, 2, *keep.shape[2:]).transpose(0, 1)] == 0).all()  # nothing lands on a dropped block


def test_block_masks_compose_and_are_checked():
    a = torch.tensor([True, True, False]).reshape(1, 1, 1, 3).expand(4, 1, 1, 3)
    b = torch.tensor([True, False, True]).reshape(1, 1, 1, 3).expand(4, 1, 1, 3)
    both = HeadEdits(block_keep=a, keep_block_size=64).then(HeadEdits(block_keep=b, keep_block_size=64))
    assert both.block_keep[0, 0, 0].tolist() == [True, False, False] and both.keep_block_size == 64
    with pytest.raises(ValueError, match="blocks of 64 and 128"):
        HeadEdits(block_keep=a, keep_block_size=64).then(HeadEdits(block_keep=b))
    with pytest.raises(ValueError, match="must be a bool"):
        HeadEdits(block_keep=a.float())
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match=r"13 queries and 13 keys of 2 sequence\(s\) in blocks of 64 need"):
        attention(q, k, v, edits=HeadEdits(block_keep=a, keep_block_size=64))
