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

from workbench.kernels import HeadEdits, triton_attention  # noqa: E402

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


def test_edits():
    edits = HeadEdits(**{name: None if value is None else value.to(DEVICE)
                         for name, value in vars(matrix.EDITS).items()})
    check(*inputs(B=2, seed=21), edits=edits, key_padding=padding(2, L, left=4))
    check(*inputs(seed=22), edits=edits, window=WINDOW, causal=False)


def test_only_requested_statistics_are_computed():
    matrix.check_only_requested_statistics(triton_attention.attention, *(t.float() for t in inputs(seed=3)))


def test_user_errors_name_the_bad_value():
    matrix.check_user_errors(triton_attention.attention, *(t.float() for t in inputs(seed=4)))


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
    matrix.check_traces_agree(subject, token_ids(2, 40), "triton", 1e-4)
