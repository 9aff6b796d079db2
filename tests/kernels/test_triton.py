"""The fused Triton kernels against kernels.reference, in Triton's CPU interpreter (TRITON_INTERPRET=1, small
shapes, 16 x 16 blocks) and, with WORKBENCH_GPU_TESTS=1 on a CUDA machine, on the GPU at larger shapes.

The cases and the tolerance (FlashAttention's scheme: a multiple of the reference's own low-precision error) are
those of tests/kernels/matrix.py, which the CPU path is checked over too.
The interpreter runs fp32 and fp16; its tl.dot multiplies bf16's raw uint16 storage (Triton 3.9), so bf16
runs on the GPU only.
On a GPU: WORKBENCH_GPU_TESTS=1 WORKBENCH_TRITON_AUTOTUNE=0 pytest tests/kernels/test_triton.py (one pinned
configuration; each case compiles its own kernels, so running the tests in a few processes side by side saves
most of the time).
"""

import functools
import os

os.environ.setdefault("TRITON_INTERPRET", "0" if os.environ.get("WORKBENCH_GPU_TESTS") else "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

import matrix  # noqa: E402

from workbench.kernels import HeadEdits, reference, triton_attention  # noqa: E402

GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
DEVICE = "cuda" if GPU else "cpu"
# lengths span a few blocks (16 on the CPU, 64 on the GPU), so that whole and masked blocks both occur
L, D, WINDOW = (300, 64, 150) if GPU else (45, 16, 40)
inputs = functools.partial(matrix.inputs, Lq=L, head_dim=D, device=DEVICE)
padding = functools.partial(matrix.padding, device=DEVICE)
check = functools.partial(matrix.check, triton_attention.attention)
CASES = matrix.cases(L, D, WINDOW, DEVICE)
LOW_PRECISION = matrix.LOW_PRECISION


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


INTERPRETED_BLOCK_CASES = ["block_sparse", "block_sparse_edits", "chunked_prefill", "edits", "left_padding",
                           "redistribution", "window_bidirectional"]


@pytest.mark.parametrize("case", sorted(matrix.block_cases()) if GPU else INTERPRETED_BLOCK_CASES)
def test_block_statistics(case):
    """block_mass / block_max of the received pass, where tiles straddle blocks, under every edit (in the
    interpreter the cases where they do; the CPU tests cover the others)."""
    shape, opts = matrix.block_cases(300 if GPU else 80, DEVICE)[case]
    check(*inputs(seed=len(case), **shape), **opts)


def test_edits():
    edits = HeadEdits(**{name: None if value is None else value.to(DEVICE)
                         for name, value in vars(matrix.EDITS).items()})
    check(*inputs(B=2, seed=21), edits=edits, key_padding=padding(2, L, left=4))
    check(*inputs(seed=22), edits=edits, window=WINDOW, causal=False)


def test_learned_sinks_with_edits():
    matrix.check_learned_sinks_with_edits(triton_attention.attention, inputs, padding, L, DEVICE)


def test_only_requested_statistics_are_computed():
    matrix.check_only_requested_statistics(triton_attention.attention, *(t.float() for t in inputs(seed=3)))


@pytest.mark.parametrize("case", ["causal", "left_padding", "window", "sinks_and_cap"])
def test_pointer_loads_match_reference(case, monkeypatch):
    """The portable path (pointer loads, for GPUs without tensor descriptors), which inputs a descriptor cannot
    describe (a base off 16 bytes) take too."""
    shape, opts = CASES[case]
    q, k, v = inputs(seed=len(case) + 5, **shape)
    unaligned = torch.empty(q.numel() + 1, dtype=torch.float32, device=q.device)[1:].view(q.shape).copy_(q)
    assert triton_attention._use_tma(q.float(), k.float()) and not triton_attention._use_tma(unaligned, k.float())
    monkeypatch.setattr(triton_attention, "TMA_ALLOWED", False)
    check(q, k, v, **opts)


def test_user_errors_name_the_bad_value():
    matrix.check_user_errors(triton_attention.attention, *(t.float() for t in inputs(seed=4)))


def test_pinned_tiles_from_the_environment(monkeypatch):
    """WORKBENCH_TRITON_CONFIG pins the tiles (a fifth number caps registers), the received pass takes its own
    pin or the forward's, and a malformed pin is refused naming the variable and its value."""
    monkeypatch.setattr(triton_attention, "INTERPRET", False)
    pinned = triton_attention._pinned_configuration
    monkeypatch.setenv("WORKBENCH_TRITON_CONFIG", "64,128,4,3")
    monkeypatch.delenv("WORKBENCH_TRITON_RECEIVED_CONFIG", raising=False)
    forward = {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3}
    assert pinned() == forward and pinned("WORKBENCH_TRITON_RECEIVED_CONFIG") == forward
    monkeypatch.setenv("WORKBENCH_TRITON_RECEIVED_CONFIG", "64,64,4,2,168")
    assert pinned("WORKBENCH_TRITON_RECEIVED_CONFIG") == {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4,
                                                          "num_stages": 2, "maxnreg": 168}
    monkeypatch.delenv("WORKBENCH_TRITON_CONFIG")
    assert pinned() is None or os.environ.get("WORKBENCH_TRITON_AUTOTUNE") == "0"
    monkeypatch.setenv("WORKBENCH_TRITON_CONFIG", "64,128,4")
    with pytest.raises(ValueError, match="WORKBENCH_TRITON_CONFIG='64,128,4'"):
        pinned()


@pytest.mark.skipif(not GPU, reason="long sequences need a GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gpu_long_sequences(dtype, head_dim):
    check(*inputs(H=8, Hkv=2, Lq=4096 + 37, head_dim=head_dim, seed=head_dim), dtype=dtype, distance_cap=128)


@pytest.mark.skipif(not GPU, reason="the tracer uses the Triton kernels only on CUDA")
@pytest.mark.parametrize("name", ["qwen2", "gemma2", "bert", "gpt_oss"])
def test_gpu_tracer_matches_the_reference_backend(name):
    """Tiny models on CUDA (sliding windows, GQA, softcap, bidirectional, learned sinks): Triton and reference
    traces agree."""
    from tiny_models import build, token_ids

    import workbench

    subject = workbench.load(build(name).cuda())
    matrix.check_traces_agree(subject, token_ids(2, 40), "triton", 1e-4)


@pytest.mark.skipif(not GPU, reason="bf16 on real inputs needs a GPU")
def test_gpu_real_attention_inputs_in_bf16(monkeypatch):
    """The kernel on q, k, v captured from a trained model, in bf16, against the float64 brute force (the Triton
    forward on Hopper too; tests/kernels/test_gluon.py takes the Gluon one)."""
    from workbench.kernels import gluon_attention

    monkeypatch.setattr(gluon_attention, "ALLOWED", False)
    for q, k, v in matrix.real_attention_inputs(DEVICE):
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
