"""The VAR redistribution edit (`HeadEdits.redistribute`): the chunked reference against a brute-force edit of
the materialized attention map, row by row with the formula of `workbench.kernels.contract` (float64 inputs: out to
1e-12, the statistics, which the reference returns in float32, to 1e-6); the
fused Triton kernels against the reference in Triton's CPU interpreter, with the tolerance scheme of
tests/kernels/test_triton.py (its `check`).
"""

import itertools
import math

import pytest
import torch
from test_triton import DEVICE, GPU, WINDOW, L, check, inputs, padding

from workbench.kernels import ALL_STATS, HeadEdits, reference

SOURCES, TARGETS = (0, 2), (5, 7, 30)
FRACTIONS = (0.0, 0.4, 1.0, 0.75)  # per query head: identity, partial, everything, partial
TIGHT = dict(rtol=1e-12, atol=1e-12)


def redistribution(fractions=FRACTIONS, sources=SOURCES, targets=TARGETS, device="cpu"):
    return HeadEdits(redistribute=torch.tensor(fractions, dtype=torch.float64, device=device),
                     source_keys=torch.tensor(sources, device=device), target_keys=torch.tensor(targets, device=device))


def brute_force(q, k, v, fractions, sources, targets, start=0):
    """Full causal softmax map [B, H, L, L] and its redistribution, one row at a time, by the contract's formula."""
    group = q.shape[1] // k.shape[1]
    kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = q @ kr.transpose(-1, -2) / math.sqrt(q.shape[-1])
    n = s.shape[-1]
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    p = torch.softmax(s, -1)
    edited = p.clone()
    for b, h, i in itertools.product(*map(range, p.shape[:3])):
        row = p[b, h, i]
        moved = sum(row[start + j] for j in sources)
        held = sum(row[start + j] for j in targets)
        if held > 0:
            for j in sources:
                edited[b, h, i, start + j] = (1 - fractions[h]) * row[start + j]
            for j in targets:
                edited[b, h, i, start + j] = row[start + j] * (1 + fractions[h] * moved / held)
    return p, edited, edited @ vr


def test_reference_equals_the_brute_force_edit():
    q, k, v = (t.cpu() for t in inputs(B=2, Lq=12, seed=1))
    _, want, want_out = brute_force(q, k, v, FRACTIONS, SOURCES, (5, 7, 9))
    out, got = reference.attention(q, k, v, stats=ALL_STATS, sink_keys=(0, 5), distance_cap=4,
                                   edits=redistribution(targets=(5, 7, 9)))
    torch.testing.assert_close(out, want_out, **TIGHT)
    torch.testing.assert_close(want.sum(-1), torch.ones_like(want[..., 0]), **TIGHT)
    xlogx = torch.xlogy(want, want)
    dist = (torch.arange(12)[:, None] - torch.arange(12)[None, :]).abs().clamp_max(4).double()
    torch.testing.assert_close(got["entropy"].double(), -xlogx.sum(-1), rtol=1e-6, atol=1e-6)  # stats are fp32
    torch.testing.assert_close(got["sink_mass"].double(), want[..., [0, 5]].sum(-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got["max_prob"].double(), want.amax(-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got["window_distance"].double(), (want * dist).sum(-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got["received"].double(), want.sum(2), rtol=1e-6, atol=1e-6)
    assert torch.equal(got["argmax_key"], want.argmax(-1))
    pattern = reference.attention_pattern(q, k, range(4), (0, 12), edits=redistribution(targets=(5, 7, 9)))
    torch.testing.assert_close(pattern.double(), want, rtol=1e-6, atol=1e-7)


def test_rows_without_target_mass_are_unchanged():
    """Causal rows 0..4 see none of the targets 5, 7, 9: their sinks keep their attention, nothing moves."""
    q, k, v = (t.cpu() for t in inputs(Lq=12, seed=2))
    plain = brute_force(q, k, v, FRACTIONS, SOURCES, (5, 7, 9))[0]
    out, got = reference.attention(q, k, v, stats=("sink_mass",), sink_keys=SOURCES,
                                   edits=redistribution(targets=(5, 7, 9)))
    torch.testing.assert_close(got["sink_mass"][..., :5].double(), plain[..., :5, [0, 2]].sum(-1), rtol=1e-6, atol=0)
    edited_rows = got["sink_mass"][..., 5:].double() / plain[..., 5:, [0, 2]].sum(-1)
    want = torch.tensor([1 - f for f in FRACTIONS], dtype=torch.float64)[None, :, None].expand_as(edited_rows)
    torch.testing.assert_close(edited_rows, want, rtol=1e-5, atol=1e-6)  # sink mass drops by 1 - f


def test_left_padding_counts_positions_from_the_first_real_key():
    q, k, v = (t.cpu() for t in inputs(B=2, Lq=14, seed=3))
    mask = torch.ones(2, 14, dtype=torch.bool)
    mask[1, :3] = False
    out, got = reference.attention(q, k, v, stats=ALL_STATS, key_padding=mask, edits=redistribution(targets=(5, 7)))
    _, want, want_out = brute_force(q[1:, :, 3:], k[1:, :, 3:], v[1:, :, 3:], FRACTIONS, SOURCES, (5, 7))
    torch.testing.assert_close(out[1:, :, 3:], want_out, **TIGHT)
    torch.testing.assert_close(got["received"][1:, :, 3:].double(), want.sum(2), rtol=1e-6, atol=1e-6)


def test_zero_fraction_is_the_identity():
    q, k, v = (t.cpu() for t in inputs(seed=4))
    plain_out, plain = reference.attention(q, k, v, stats=ALL_STATS)
    out, got = reference.attention(q, k, v, stats=ALL_STATS, edits=redistribution(fractions=(0.0,) * 4))
    torch.testing.assert_close(out, plain_out, rtol=0, atol=0)
    for name in ALL_STATS:
        torch.testing.assert_close(got[name], plain[name], rtol=0, atol=0, equal_nan=True)


def test_composition():
    twice = redistribution(fractions=(0.5,) * 4).then(redistribution(fractions=(0.2, 0.0, 1.0, 0.5)))
    torch.testing.assert_close(twice.redistribute, torch.tensor([0.6, 0.5, 1.0, 0.75], dtype=torch.float64))
    q, k, v = (t.cpu() for t in inputs(Lq=12, seed=5))
    once = redistribution(fractions=(0.5,) * 4, targets=(5, 7, 9))
    # redistributing twice over the same keys is one redistribution of 1 - (1 - f1)(1 - f2)
    _, step = brute_force(q, k, v, (0.5,) * 4, SOURCES, (5, 7, 9))[:2]
    rows = itertools.product(*map(range, step.shape[:3]))
    for b, h, i in rows:
        row = step[b, h, i].clone()
        moved, held = row[list(SOURCES)].sum(), row[[5, 7, 9]].sum()
        if held > 0:
            f = (0.2, 0.0, 1.0, 0.5)[h]
            step[b, h, i, list(SOURCES)] = row[list(SOURCES)] * (1 - f)
            step[b, h, i, [5, 7, 9]] = row[[5, 7, 9]] * (1 + f * moved / held)
    pattern = reference.attention_pattern(q, k, range(4), (0, 12), edits=once.then(
        redistribution(fractions=(0.2, 0.0, 1.0, 0.5), targets=(5, 7, 9))))
    torch.testing.assert_close(pattern.double(), step, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"cannot compose redistributions from keys \[0, 2\] to \[5, 7, 30\]"):
        redistribution().then(redistribution(targets=(6,)))
    bias = HeadEdits(key_bias=torch.ones(4, 1), bias_keys=torch.tensor([3]))
    assert torch.equal(bias.then(once).target_keys, once.target_keys)
    assert torch.equal(once.then(bias).key_bias, bias.key_bias)


@pytest.mark.parametrize("kwargs, message", [
    (dict(fractions=(0.5, 1.5, 0.0, 0.0)), r"fractions \[1.5\] are outside \[0, 1\]"),
    (dict(targets=(2, 9)), r"keys \[2\] are both source and target"),
    (dict(sources=(-1,)), r"source_keys \[-1\] must be distinct"),
    (dict(targets=()), r"target_keys \[\] must be distinct"),
])
def test_bad_edits_name_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        redistribution(**kwargs)


def test_edits_need_all_three_fields():
    with pytest.raises(ValueError, match="must be given together"):
        HeadEdits(redistribute=torch.zeros(4), source_keys=torch.tensor([0]))


TRITON_CASES = {  # (input shape, options): sinks that are sources, targets and neither; masks that hide targets
    "causal_padded": ({"B": 2}, {"key_padding": padding(2, L, left=9), "sink_keys": (0, 5, 11)}),
    "window_bidirectional": ({"Lq": L + 5}, {"window": WINDOW - 10, "causal": False, "distance_cap": 6}),
    "peaked_softcap": ({"peak": 8.0}, {"softcap": 4.0}),
    "chunked_prefill": ({"Lq": 9, "Lk": L}, {"distance_cap": 6}),
}


@pytest.mark.parametrize("case", sorted(TRITON_CASES))
def test_triton_matches_reference(case):
    shape, opts = TRITON_CASES[case]
    check(*inputs(seed=len(case), **shape), edits=redistribution(device=DEVICE), **opts)


@pytest.mark.parametrize("case", ["causal_padded", "chunked_prefill"])
def test_triton_every_other_key_as_target(case):
    """ACT's exact scaling: the targets are every key that is not a source (as long a list as the input), which
    the kernels take as the complement of the sources instead of walking the list."""
    from workbench.kernels.triton_attention import _rest_of_sources

    shape, opts = TRITON_CASES[case]
    lk = shape.get("Lk", L)
    targets = tuple(key for key in range(lk) if key not in SOURCES)
    edits = redistribution(targets=targets, device=DEVICE)
    assert _rest_of_sources(edits.source_keys, edits.target_keys, lk)
    assert not _rest_of_sources(edits.source_keys, edits.target_keys[:-1], lk)
    check(*inputs(seed=len(case) + 40, **shape), edits=edits, **opts)


@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    not GPU, reason="Triton's interpreter multiplies bf16 as raw integers"))])
def test_triton_low_precision(dtype):
    check(*inputs(seed=31), dtype=dtype, edits=redistribution(device=DEVICE), sink_keys=(0, 7))


def test_triton_composed_edits():
    edits = HeadEdits(temperature=torch.tensor([1.0, 0.5, 2.0, 1.3], device=DEVICE),
                      key_bias=torch.tensor([[0.0], [2.0], [-3.0], [1.0]], device=DEVICE),
                      bias_keys=torch.tensor([5], device=DEVICE),
                      gate=torch.tensor([1.0, 0.0, 2.0, 0.5], device=DEVICE)).then(redistribution(device=DEVICE))
    check(*inputs(seed=32), edits=edits, sink_keys=(0, 30))
