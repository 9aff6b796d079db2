"""The test matrix every fast attention path is checked over against `workbench.kernels.reference`, and its tolerance.

Tolerances follow FlashAttention's tests: each case starts from float64 inputs; the oracle is the reference
run on them in float64, and the baseline is the reference run on the inputs rounded to the tested dtype
(computing in float32). Every statistic of the path under test, given the same rounded inputs, must be within
2 x (baseline - oracle) + 4 float32 ulps of the oracle, the rows that see no key NaN in both. For float32
inputs the baseline error is float32 rounding alone; for fp16/bf16 it is dominated by the rounding of the
inputs. argmax_key must hold the maximal probability of the baseline's attention map up to that
tolerance (a near-tie may resolve either way).
"""

import dataclasses

import pytest
import torch

from workbench.kernels import ALL_STATS, HeadEdits, reference

FP32_ULP = torch.finfo(torch.float32).eps


def inputs(B=1, H=4, Hkv=2, Lq=45, Lk=None, head_dim=16, seed=0, peak=1.0, device="cpu"):
    """Float64 q, k, v on `device`; `peak` scales q (large values: a peaked softmax)."""
    g = torch.Generator().manual_seed(seed)
    make = lambda h, n: torch.randn(B, h, n, head_dim, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = make(H, Lq) * peak, make(Hkv, Lk or Lq), make(Hkv, Lk or Lq)
    return q.to(device), k.to(device), v.to(device)


def padding(B, n, left=0, right=0, device="cpu"):
    """[B, n] key mask: the last sequence loses `left` keys at the front, the first `right` at the end."""
    mask = torch.ones(B, n, dtype=torch.bool)
    mask[-1, :left] = False
    mask[0, n - right:] = False
    return mask.to(device)


def cases(L, D, window, device="cpu"):
    """name -> (shape options of `inputs`, options of `attention`), for lengths L, head_dim D and a window."""
    return {
        "causal": ({}, {}),
        "bidirectional": ({}, {"causal": False}),
        "left_padding": ({"B": 2}, {"key_padding": padding(2, L, left=9, device=device)}),
        "right_padding": ({"B": 2}, {"key_padding": padding(2, L, right=6, device=device)}),
        "window": ({"Lq": L + 25}, {"window": window}),
        "window_bidirectional": ({"Lq": L + 25}, {"window": window - 10, "causal": False}),
        "window_of_one": ({}, {"window": 1}),
        "softcap_scale": ({}, {"softcap": 4.0, "scale": 0.6}),
        "peaked": ({"peak": 8.0}, {}),
        "sinks_and_cap": ({}, {"sink_keys": (0, 3), "distance_cap": 6}),
        "wide_cap": ({}, {"distance_cap": 2 * L // 3}),  # whole blocks inside the cap and beyond it
        "no_sinks": ({}, {"sink_keys": ()}),
        "one_kv_head": ({"Hkv": 1}, {}),
        "no_grouping": ({"Hkv": 4}, {}),
        "head_dim_padded": ({"head_dim": D + D // 2}, {}),
        "decode": ({"Lq": 1, "Lk": L}, {"window": window}),
        "chunked_prefill": ({"Lq": 9, "Lk": L}, {}),
        "prefill_padded_window": ({"B": 2, "Lq": 20, "Lk": L},
                                  {"window": 11, "key_padding": padding(2, L, left=5, device=device)}),
        "learned_sinks": ({}, {"sinks": SINKS.to(device)}),
        "learned_sinks_window_padded": ({"B": 2}, {"sinks": SINKS.to(device), "window": window // 3,
                                                   "key_padding": padding(2, L, left=7, device=device)}),
        "learned_sinks_softcap_decode": ({"Lq": 1, "Lk": L}, {"sinks": SINKS.to(device), "softcap": 4.0}),
    }


EDITS = HeadEdits(temperature=torch.tensor([1.0, 0.5, 2.0, 1.3]),  # every in-kernel edit but the VAR redistribution
                  key_bias=torch.tensor([[0.0, 1.0], [-2.0, 0.5], [3.0, 0.0], [-1e4, 1.0]]),
                  bias_keys=torch.tensor([0, 3]), gate=torch.tensor([1.0, 0.0, 2.0, 0.5]),
                  identity_mix=torch.tensor([0.0, 0.3, 1.0, 0.5]))
# learned sink logits per head (GPT-OSS): one below the logits, two among them, one that takes nearly all the mass
SINKS = torch.tensor([-3.0, 0.5, 2.0, 60.0], dtype=torch.float64)
SINK_EDITS = dataclasses.replace(EDITS, sink_bias=torch.tensor([0.0, 1.5, -1e4, -2.0]))  # -1e4: the sink removed
VAR = HeadEdits(redistribute=torch.tensor([0.5, 1.0, 0.0, 0.3]), source_keys=torch.tensor([0]),
                target_keys=torch.tensor([3, 66]))  # key 66: in the second block of 64


def block_cases(L=150, device="cpu"):
    """name -> (shape options of `inputs`, options of `attention`) over L (> 64) keys in blocks of 64 (and 100):
    the block statistics where tiles straddle block edges (left padding, chunked prefill) and under every edit."""
    def on(edits):
        return HeadEdits(**{n: t.to(device) if isinstance(t, torch.Tensor) else t for n, t in vars(edits).items()})

    return {
        "causal": ({"Lq": L}, {"block_size": 64}),
        "left_padding": ({"B": 2, "Lq": L},
                         {"block_size": 64, "key_padding": padding(2, L, left=L // 4, device=device)}),
        "chunked_prefill": ({"B": 2, "Lq": L // 2, "Lk": L},
                            {"block_size": 64, "key_padding": padding(2, L, left=9, device=device)}),
        "block_of_100": ({"Lq": L}, {"block_size": 100, "window": 50}),
        "window_bidirectional": ({"Lq": L, "Hkv": 1}, {"block_size": 64, "window": 70, "causal": False}),
        "edits": ({"B": 2, "Lq": L}, {"block_size": 64, "edits": on(EDITS),
                                      "key_padding": padding(2, L, left=5, device=device)}),
        "redistribution": ({"Lq": L}, {"block_size": 64, "edits": on(VAR)}),
        # 9 padding keys: the kernels' tiles straddle the mask's blocks (which count from the first real key)
        "block_sparse": ({"B": 2, "Lq": L}, {"block_size": 64, "edits": on(block_keep(L, 2)),
                                             "key_padding": padding(2, L, left=9, device=device)}),
        "block_sparse_edits": ({"Lq": L}, {"block_size": 64, "window": 70, "causal": False,
                                           "edits": on(EDITS.then(VAR).then(block_keep(L, 1)))}),
    }


def block_keep(L: int, per_sequence: int, size: int = 64, seed: int = 0) -> HeadEdits:
    """A block-sparse edit of 4 heads that keeps about 60% of the blocks of L queries and keys, at random."""
    n = -(-L // size)
    keep = torch.rand(4, per_sequence, n, n, generator=torch.Generator().manual_seed(seed)) < 0.6
    return HeadEdits(block_keep=keep, keep_block_size=size)


LOW_PRECISION = ["causal", "left_padding", "window", "softcap_scale", "peaked", "chunked_prefill", "learned_sinks"]


# statistics made of one or a few probabilities, whose float32 logit (recomputed, or the largest) sets their error
ONE_LOGIT = ("block_max", "sink_mass", "self_mass", "max_prob")


def check(kernel, q, k, v, dtype=torch.float32, stats=ALL_STATS, **opts):
    """kernel(q, k, v, stats=stats, **opts) vs the oracle for each statistic (every one by default, max_prob with
    argmax_key), within the module's tolerance."""
    oracle_out, oracle = reference.attention(q, k, v, stats=ALL_STATS, **opts)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    base_out, base = reference.attention(q, k, v, stats=ALL_STATS, **opts)
    out, got = kernel(q, k, v, stats=stats, **opts)
    assert out.shape == base_out.shape and out.dtype == base_out.dtype
    assert list(got) == list(stats)
    tolerance = {}
    for name, want, baseline, value in [("out", oracle_out, base_out, out)] + [
            (n, oracle[n], base[n], got[n]) for n in stats if n != "argmax_key"]:
        assert value.shape == baseline.shape and value.dtype == baseline.dtype, name
        want, baseline, value = want.double(), baseline.double(), value.double()
        assert torch.equal(value.isnan(), want.isnan()), f"{name}: NaN rows differ"
        floor = 4 * FP32_ULP * max(1.0, want.nan_to_num().abs().max().item())
        if name in ONE_LOGIT:  # a few p = exp(s - lse), each from float32 logits s: |s| ulps
            floor = 4 * FP32_ULP * max(1.0, oracle["lse"].nan_to_num().abs().max().item())
        tolerance[name] = 2 * (baseline - want).nan_to_num().abs().max().item() + floor
        error = (value - want).nan_to_num().abs().max().item()
        assert error <= tolerance[name], f"{name}: error {error:.3g} > tolerance {tolerance[name]:.3g}"
    if "argmax_key" in stats:
        check_argmax(q, k, got, base, tolerance["max_prob"], **opts)


def check_learned_sinks_with_edits(kernel, inputs, padding, L, device):
    """Learned sinks under every logit edit plus the sink bias (padded), and under the VAR redistribution."""
    on = lambda edits: HeadEdits(**{name: None if value is None else value.to(device)  # noqa: E731
                                    for name, value in vars(edits).items()})
    sinks = SINKS.to(device)
    check(kernel, *inputs(B=2, seed=31), edits=on(SINK_EDITS), sinks=sinks, key_padding=padding(2, L, left=4))
    var = HeadEdits(redistribute=torch.tensor([0.0, 0.4, 1.0, 0.75]), source_keys=torch.tensor([0, 2]),
                    target_keys=torch.tensor([5, 7, 30]), temperature=torch.tensor([1.0, 2.0, 0.5, 1.0]))
    check(kernel, *inputs(seed=32), edits=on(var), sinks=sinks, sink_keys=(0, 5), distance_cap=4)


def check_argmax(q, k, got, base, tol, **opts):
    """Rows that see no key have -1; elsewhere the kernel's key holds the baseline's maximal probability."""
    arg, want = got["argmax_key"], base["argmax_key"]
    assert arg.dtype == torch.int64 and torch.equal(arg == -1, want == -1)
    if q.shape[2] != k.shape[2]:  # attention_pattern covers square maps only: ask for the same key
        assert torch.equal(arg, want)
        return
    pattern = reference.attention_pattern(q, k, range(q.shape[1]), (0, k.shape[2]), **{
        key: value for key, value in opts.items() if key not in ("sink_keys", "distance_cap", "block_size")})
    start = 0 if opts.get("key_padding") is None else opts["key_padding"].int().argmax(-1)[:, None, None]
    at_kernel_key = pattern.gather(-1, (arg + start).clamp_min(0)[..., None])[..., 0]
    gap = (base["max_prob"] - at_kernel_key).nan_to_num()
    assert gap.max().item() <= tol, f"argmax_key picks a key {gap.max().item():.3g} below the maximum"


def check_only_requested_statistics(kernel, q, k, v):
    """kernel returns just the statistics asked for, in that order, and the same output with none."""
    out, stats = kernel(q, k, v, stats=("argmax_key", "received"))
    assert list(stats) == ["argmax_key", "received"]
    plain, none = kernel(q, k, v)
    assert none == {}
    torch.testing.assert_close(out, plain, rtol=0, atol=0)


def check_user_errors(kernel, q, k, v):
    """kernel's errors name the bad value: more queries than keys, a key_padding of the wrong shape, a typo."""
    with pytest.raises(ValueError, match="more queries"):
        kernel(q, k[:, :, :5], v[:, :, :5])
    with pytest.raises(ValueError, match="key_padding"):
        kernel(q, k, v, key_padding=torch.ones(1, 3, dtype=torch.bool, device=q.device))
    with pytest.raises(ValueError, match="unknown statistic"):
        kernel(q, k, v, stats=("entropies",))


def check_traces_agree(subject, inputs, backend, tol):
    """workbench.trace with `backend` gives the reference backend's statistics (argmax_key up to rare near-ties)."""
    import workbench

    fast = workbench.trace(subject, inputs, backend=backend, distance_cap=8)
    slow = workbench.trace(subject, inputs, backend="reference", distance_cap=8)
    assert fast.options["backend"] == backend
    for stat, value in slow.stats.items():
        if stat == "argmax_key":
            assert (fast.stats[stat] == value).float().mean() > 0.99
        else:
            torch.testing.assert_close(fast.stats[stat], value, atol=tol, rtol=tol, equal_nan=True, msg=stat)


def real_attention_inputs(device, layers=(1, 3, 5)) -> list[tuple[torch.Tensor, ...]]:
    """q, k, v (float64) that `organism`, a trained model, feeds its attention at `layers` on held-out text of
    1024 tokens: first-token sinks and retrieval heads, not random logits."""
    import workbench
    from workbench import zoo
    from workbench.kernels import reference as ref_module
    from workbench.tracer import capture

    subject = workbench.load("organism", device=device)
    text = (zoo.model_dir("organism") / "heldout.txt").read_text()[:20_000]
    ids = subject.tokenizer(text, return_tensors="pt")["input_ids"][:, :1024].to(device)
    seen = []
    original = ref_module.attention

    def keep(q, k, v, **kwargs):
        seen.append((q.double().cpu(), k.double().cpu(), v.double().cpu()))
        return original(q, k, v, **kwargs)

    ref_module.attention = keep
    try:
        with torch.no_grad(), capture(subject, stats=("lse",), backend="reference"):
            subject.model(input_ids=ids)
    finally:
        ref_module.attention = original
    return [tuple(t.to(device) for t in seen[i]) for i in layers]
