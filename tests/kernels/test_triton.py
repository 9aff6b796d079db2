"""The fused Triton kernels against kernels.reference, in Triton's CPU interpreter (TRITON_INTERPRET=1, small
shapes, 16 x 16 blocks) and, with WORKBENCH_GPU_TESTS=1 on a CUDA machine, on the GPU at larger shapes.

Tolerances follow FlashAttention's tests: each case starts from float64 inputs; the oracle is the reference
run on them in float64, and the baseline is the reference run on the inputs rounded to the tested dtype
(computing in float32). Every statistic of the kernel, given the same rounded inputs, must be within
2 x (baseline - oracle) + 4 float32 ulps of the oracle, the rows that see no key NaN in both. For float32
inputs the baseline error is float32 rounding alone; for fp16/bf16 it is dominated by the rounding of the
inputs. argmax_key must hold the maximal probability of the baseline's attention map up to that
tolerance (a near-tie may resolve either way).
The interpreter runs fp32 and fp16; its tl.dot multiplies bf16's raw uint16 storage (Triton 3.9), so bf16
runs on the GPU only.
On a GPU: WORKBENCH_GPU_TESTS=1 WORKBENCH_TRITON_AUTOTUNE=0 pytest tests/kernels/test_triton.py (one pinned
configuration; each case compiles its own kernels, so running the tests in a few processes side by side saves
most of the time).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "0" if os.environ.get("WORKBENCH_GPU_TESTS") else "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from workbench.kernels import ALL_STATS, HeadEdits, reference, triton_attention  # noqa: E402

GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
DEVICE = "cuda" if GPU else "cpu"
# lengths span a few blocks (16 on the CPU, 64 on the GPU), so that whole and masked blocks both occur
L, D, WINDOW = (300, 64, 150) if GPU else (45, 16, 40)
FP32_ULP = torch.finfo(torch.float32).eps


def inputs(B=1, H=4, Hkv=2, Lq=L, Lk=None, head_dim=D, seed=0, peak=1.0):
    """Float64 q, k, v on the test device; `peak` scales q (large values: a peaked softmax)."""
    g = torch.Generator().manual_seed(seed)
    make = lambda h, n: torch.randn(B, h, n, head_dim, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = make(H, Lq) * peak, make(Hkv, Lk or Lq), make(Hkv, Lk or Lq)
    return q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)


def padding(B, n, left=0, right=0):
    """[B, n] key mask: the last sequence loses `left` keys at the front, the first `right` at the end."""
    mask = torch.ones(B, n, dtype=torch.bool)
    mask[-1, :left] = False
    mask[0, n - right:] = False
    return mask.to(DEVICE)


def check(q, k, v, dtype=torch.float32, **opts):
    """Kernel vs oracle for every statistic, within the tolerance of the module docstring."""
    oracle_out, oracle = reference.attention(q, k, v, stats=ALL_STATS, **opts)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    base_out, base = reference.attention(q, k, v, stats=ALL_STATS, **opts)
    out, got = triton_attention.attention(q, k, v, stats=ALL_STATS, **opts)
    assert out.shape == base_out.shape and out.dtype == base_out.dtype
    assert list(got) == list(ALL_STATS)
    tolerance = {}
    for name, want, baseline, value in [("out", oracle_out, base_out, out)] + [
            (n, oracle[n], base[n], got[n]) for n in ALL_STATS if n != "argmax_key"]:
        assert value.shape == baseline.shape and value.dtype == baseline.dtype, name
        want, baseline, value = want.double(), baseline.double(), value.double()
        assert torch.equal(value.isnan(), want.isnan()), f"{name}: NaN rows differ"
        floor = 4 * FP32_ULP * max(1.0, want.nan_to_num().abs().max().item())
        tolerance[name] = 2 * (baseline - want).nan_to_num().abs().max().item() + floor
        error = (value - want).nan_to_num().abs().max().item()
        assert error <= tolerance[name], f"{name}: error {error:.3g} > tolerance {tolerance[name]:.3g}"
    check_argmax(q, k, got, base, tolerance["max_prob"], **opts)


def check_argmax(q, k, got, base, tol, **opts):
    """Rows that see no key have -1; elsewhere the kernel's key holds the baseline's maximal probability."""
    arg, want = got["argmax_key"], base["argmax_key"]
    assert arg.dtype == torch.int64 and torch.equal(arg == -1, want == -1)
    if q.shape[2] != k.shape[2]:  # attention_pattern covers square maps only: ask for the same key
        assert torch.equal(arg, want)
        return
    pattern = reference.attention_pattern(q, k, range(q.shape[1]), (0, k.shape[2]), **{
        key: value for key, value in opts.items() if key not in ("sink_keys", "distance_cap")})
    start = 0 if opts.get("key_padding") is None else opts["key_padding"].int().argmax(-1)[:, None, None]
    at_kernel_key = pattern.gather(-1, (arg + start).clamp_min(0)[..., None])[..., 0]
    gap = (base["max_prob"] - at_kernel_key).nan_to_num()
    assert gap.max().item() <= tol, f"argmax_key picks a key {gap.max().item():.3g} below the maximum"


CASES = {
    "causal": ({}, {}),
    "bidirectional": ({}, {"causal": False}),
    "left_padding": ({"B": 2}, {"key_padding": padding(2, L, left=9)}),
    "right_padding": ({"B": 2}, {"key_padding": padding(2, L, right=6)}),
    "window": ({"Lq": L + 25}, {"window": WINDOW}),
    "window_bidirectional": ({"Lq": L + 25}, {"window": WINDOW - 10, "causal": False}),
    "window_of_one": ({}, {"window": 1}),
    "softcap_scale": ({}, {"softcap": 4.0, "scale": 0.6}),
    "peaked": ({"peak": 8.0}, {}),
    "sinks_and_cap": ({}, {"sink_keys": (0, 3), "distance_cap": 6}),
    "no_sinks": ({}, {"sink_keys": ()}),
    "one_kv_head": ({"Hkv": 1}, {}),
    "no_grouping": ({"Hkv": 4}, {}),
    "head_dim_padded": ({"head_dim": D + D // 2}, {}),
    "decode": ({"Lq": 1, "Lk": L}, {"window": WINDOW}),
    "chunked_prefill": ({"Lq": 9, "Lk": L}, {}),
    "prefill_padded_window": ({"B": 2, "Lq": 20, "Lk": L}, {"window": 11, "key_padding": padding(2, L, left=5)}),
}
LOW_PRECISION = ["causal", "left_padding", "window", "softcap_scale", "peaked", "chunked_prefill"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_reference(case):
    shape, opts = CASES[case]
    check(*inputs(seed=len(case), **shape), **opts)


@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    not GPU, reason="Triton's interpreter multiplies bf16 as raw integers"))])
@pytest.mark.parametrize("case", LOW_PRECISION)
def test_low_precision(case, dtype):
    shape, opts = CASES[case]
    check(*inputs(seed=len(case) + 1, **shape), dtype=dtype, **opts)


def test_edits():
    edits = HeadEdits(temperature=torch.tensor([1.0, 0.5, 2.0, 1.3]),
                      key_bias=torch.tensor([[0.0, 1.0], [-2.0, 0.5], [3.0, 0.0], [-1e4, 1.0]]),
                      bias_keys=torch.tensor([0, 3]), gate=torch.tensor([1.0, 0.0, 2.0, 0.5]),
                      identity_mix=torch.tensor([0.0, 0.3, 1.0, 0.5]))
    edits = HeadEdits(**{name: None if value is None else value.to(DEVICE) for name, value in vars(edits).items()})
    check(*inputs(B=2, seed=21), edits=edits, key_padding=padding(2, L, left=4))
    check(*inputs(seed=22), edits=edits, window=WINDOW, causal=False)


def test_only_requested_statistics_are_computed():
    q, k, v = (t.float() for t in inputs(seed=3))
    out, stats = triton_attention.attention(q, k, v, stats=("argmax_key", "received"))
    assert list(stats) == ["argmax_key", "received"]
    plain, none = triton_attention.attention(q, k, v)
    assert none == {}
    torch.testing.assert_close(out, plain, rtol=0, atol=0)


def test_user_errors_name_the_bad_value():
    q, k, v = (t.float() for t in inputs(seed=4))
    with pytest.raises(ValueError, match="more queries"):
        triton_attention.attention(q, k[:, :, :5], v[:, :, :5])
    with pytest.raises(ValueError, match="key_padding"):
        triton_attention.attention(q, k, v, key_padding=torch.ones(1, 3, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="unknown statistic"):
        triton_attention.attention(q, k, v, stats=("entropies",))


@pytest.mark.skipif(not GPU, reason="long sequences need a GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gpu_long_sequences(dtype, head_dim):
    check(*inputs(H=8, Hkv=2, Lq=4096 + 37, head_dim=head_dim, seed=head_dim), dtype=dtype, distance_cap=128)


@pytest.mark.skipif(not GPU, reason="the tracer uses the Triton kernels only on CUDA")
@pytest.mark.parametrize("name", ["qwen2", "gemma2", "bert"])
def test_gpu_tracer_matches_the_reference_backend(name):
    """Tiny models on CUDA (sliding windows, GQA, softcap, bidirectional): Triton and reference traces agree."""
    from tiny_models import build, token_ids

    import workbench

    subject = workbench.load(build(name, "eager" if name == "gemma2" else "sdpa").cuda())
    ids = token_ids(2, 40)
    fast = workbench.trace(subject, ids, backend="triton", distance_cap=8)
    slow = workbench.trace(subject, ids, backend="reference", distance_cap=8)
    assert fast.options["backend"] == "triton"
    for stat, value in slow.stats.items():
        if stat == "argmax_key":
            assert (fast.stats[stat] == value).float().mean() > 0.99
        else:
            torch.testing.assert_close(fast.stats[stat], value, atol=1e-4, rtol=1e-4, msg=stat)


def real_attention_inputs(layers=(1, 3, 5)) -> list[tuple[torch.Tensor, ...]]:
    """q, k, v (float64) that `organism`, a trained model, feeds its attention at `layers` on held-out text of
    1024 tokens: first-token sinks and retrieval heads, not random logits."""
    import workbench
    from workbench import zoo
    from workbench.kernels import reference as ref_module
    from workbench.tracer import capture

    subject = workbench.load("organism", device=DEVICE)
    text = (zoo.model_dir("organism") / "heldout.txt").read_text()[:20_000]
    ids = subject.tokenizer(text, return_tensors="pt")["input_ids"][:, :1024].to(DEVICE)
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
    return [tuple(t.to(DEVICE) for t in seen[i]) for i in layers]


@pytest.mark.skipif(not GPU, reason="bf16 on real inputs needs a GPU")
def test_gpu_real_attention_inputs_in_bf16():
    """The kernel on q, k, v captured from a trained model, in bf16, against the float64 brute force."""
    for q, k, v in real_attention_inputs():
        check(q, k, v, dtype=torch.bfloat16, distance_cap=64)


@pytest.mark.skipif(not GPU, reason="the fastest attention runs on CUDA")
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(8, 8, 128), (8, 2, 64)])
def test_gpu_calls_without_statistics_run_the_fastest_attention(heads, kv_heads, head_dim):
    """kernels.attention with no statistic and no edit gives the output of the float64 brute force (as closely
    as the reference does in bf16), through SDPA or FlashAttention-4; with a window it keeps our kernel."""
    from workbench import kernels
    from workbench.kernels import fastest

    q, k, v = inputs(H=heads, Hkv=kv_heads, Lq=2048, head_dim=head_dim, seed=3)
    oracle, _ = reference.attention(q, k, v)
    base, _ = reference.attention(*(t.bfloat16() for t in (q, k, v)))
    out, stats = kernels.attention(*(t.bfloat16() for t in (q, k, v)))
    assert stats == {} and out.shape == oracle.shape and out.dtype == torch.bfloat16
    allowed = 2 * (base.double() - oracle).abs().max() + 1e-2
    assert (out.double() - oracle).abs().max() <= allowed
    assert fastest.plain_attention(q, k, v, causal=True, scale=None, softcap=None, window=64,
                                   key_padding=None) is None
