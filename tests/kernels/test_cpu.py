"""The CPU path (workbench.kernels.cpu) against kernels.reference, over the matrix of the Triton tests.

Cases and tolerance are those of tests/kernels/matrix.py: every statistic within 2 x the reference's own error in
the tested dtype + 4 float32 ulps of the float64 oracle. On top of the Triton matrix: bfloat16 (the CPU path
computes it in float32), head_dim 64 and 128 at lengths that span several chunks, chunk sizes that do not
divide the length, every edit (the VAR redistribution too), float64 inputs (which go to the reference), and tiny
models traced end to end.
"""

import functools

import matrix
import pytest
import torch
from tiny_models import build, token_ids

import workbench
from workbench.kernels import ALL_STATS, HeadEdits, cpu, reference, resolve_backend

L, D, WINDOW = 45, 16, 40
inputs = functools.partial(matrix.inputs, Lq=L, head_dim=D)
CASES = matrix.cases(L, D, WINDOW)
EDITS = matrix.EDITS


@pytest.mark.parametrize("chunk", [None, 7])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_reference(case, chunk):
    shape, opts = CASES[case]
    matrix.check(functools.partial(cpu.attention, chunk_size=chunk), *inputs(seed=len(case), **shape), **opts)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", matrix.LOW_PRECISION)
def test_low_precision(case, dtype):
    shape, opts = CASES[case]
    matrix.check(cpu.attention, *inputs(seed=len(case) + 1, **shape), dtype=dtype, **opts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_longer_sequences_over_many_chunks(head_dim, dtype):
    """9 query / 3 key-value heads (SmolLM2's grouping), chunks of 50 queries over 333 keys, a window of 100."""
    q, k, v = matrix.inputs(B=2, H=9, Hkv=3, Lq=333, head_dim=head_dim, seed=head_dim)
    kernel = functools.partial(cpu.attention, chunk_size=50)
    matrix.check(kernel, q, k, v, dtype=dtype, distance_cap=64, key_padding=matrix.padding(2, 333, left=30))
    matrix.check(kernel, q, k, v, dtype=dtype, window=100, sink_keys=(0, 1))


@pytest.mark.parametrize("case", sorted(matrix.block_cases()))
def test_block_statistics(case):
    """block_mass / block_max over chunks of 33 queries, where chunks and tiles straddle blocks, every edit."""
    shape, opts = matrix.block_cases()[case]
    matrix.check(functools.partial(cpu.attention, chunk_size=33), *inputs(seed=len(case), **shape), **opts)


@pytest.mark.parametrize("layout", ["padded", "window_bidirectional"])
def test_edits(layout):
    opts = ({"key_padding": matrix.padding(2, L, left=4)} if layout == "padded"
            else {"window": WINDOW, "causal": False})
    matrix.check(cpu.attention, *inputs(B=2, seed=21), edits=EDITS, **opts)
    matrix.check(cpu.attention, *inputs(B=2, seed=22), dtype=torch.bfloat16, edits=EDITS, **opts)


def test_softcap_with_temperature_and_bias():
    """Gemma-2 order: softcap first, then the temperature, then the key bias."""
    matrix.check(cpu.attention, *inputs(seed=23), softcap=3.0, edits=EDITS)


def test_learned_sinks_with_edits():
    matrix.check_learned_sinks_with_edits(cpu.attention, inputs, matrix.padding, L, "cpu")


@pytest.mark.parametrize("layout", ["causal", "left_padding", "window_bidirectional"])
def test_redistribution(layout):
    """VAR: f = 0, partial, everything, partial per head; sources at the sink, targets near and far (rows that see
    no target keep their map)."""
    var = HeadEdits(redistribute=torch.tensor([0.0, 0.4, 1.0, 0.75]), source_keys=torch.tensor([0, 2]),
                    target_keys=torch.tensor([5, 7, 30]))
    opts = {"causal": {}, "left_padding": {"key_padding": matrix.padding(2, L, left=6)},
            "window_bidirectional": {"window": 20, "causal": False}}[layout]
    q, k, v = inputs(B=2, seed=28)
    matrix.check(cpu.attention, q, k, v, edits=var, sink_keys=(0, 5), distance_cap=4, **opts)
    matrix.check(functools.partial(cpu.attention, chunk_size=7), q, k, v, dtype=torch.bfloat16,
                 edits=var.then(HeadEdits(temperature=torch.tensor([1.0, 2.0, 0.5, 1.0]))), **opts)


def test_zero_redistribution_changes_nothing():
    q, k, v = (t.float() for t in inputs(seed=29))
    var = HeadEdits(redistribute=torch.zeros(4), source_keys=torch.tensor([0]), target_keys=torch.tensor([3]))
    plain, plain_stats = cpu.attention(q, k, v, stats=ALL_STATS)
    edited, edited_stats = cpu.attention(q, k, v, stats=ALL_STATS, edits=var)
    assert torch.equal(edited, plain)
    for name in ALL_STATS:
        torch.testing.assert_close(edited_stats[name], plain_stats[name], rtol=0, atol=0, msg=name)


def test_float64_goes_to_the_reference():
    q, k, v = inputs(seed=24)
    out, got = cpu.attention(q, k, v, stats=ALL_STATS)
    want_out, want = reference.attention(q, k, v, stats=ALL_STATS)
    assert torch.equal(out, want_out)
    for name in ALL_STATS:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, equal_nan=True, msg=name)


def test_only_requested_statistics_are_returned():
    matrix.check_only_requested_statistics(cpu.attention, *(t.float() for t in inputs(seed=25)))


def test_user_errors_name_the_bad_value():
    matrix.check_user_errors(cpu.attention, *(t.float() for t in inputs(seed=27)))
    with pytest.raises(ValueError, match="temperature has 2 heads"):
        cpu.attention(*(t.float() for t in inputs(seed=27)), edits=HeadEdits(temperature=torch.ones(2)))


def test_output_equals_torch_sdpa():
    q, k, v = (t.float() for t in matrix.inputs(H=9, Hkv=3, Lq=200, head_dim=64, seed=26))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(cpu.attention(q, k, v, stats=("entropy",))[0], want, atol=1e-6, rtol=1e-5)


def test_chunks_follow_the_last_level_cache(tmp_path, monkeypatch):
    """A quarter of the largest data cache Linux lists, from 2^20 to 2^23 scores (2^23 where none is listed), and
    at least 64 queries a chunk while those stay within 2^23 scores."""
    for index, (kind, size) in enumerate([("Data", "48K"), ("Instruction", "32K"), ("Unified", "1024K"),
                                          ("Unified", "32768K"), ("Unified", "1.5M"), ("Unified", "")]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "type").write_text(kind + "\n")
        (tmp_path / f"index{index}" / "size").write_text(size + "\n")
    assert cpu._last_level_cache(tmp_path) == 32 << 20
    assert cpu._last_level_cache(tmp_path / "absent") is None
    assert cpu.chunk_elements(32 << 20) == 1 << 21
    assert cpu.chunk_elements(None) == cpu.chunk_elements(1 << 30) == 1 << 23
    assert cpu.chunk_elements(1 << 20) == 1 << 20
    monkeypatch.setattr(cpu, "CHUNK_ELEMENTS", 1 << 21)
    assert cpu._chunk_queries(2048, 9 * 2048) == (1 << 21) // (9 * 2048)  # the cache's share: 113 queries
    assert cpu._chunk_queries(8192, 9 * 8192) == 64  # raised to 64 queries
    assert cpu._chunk_queries(131072, 32 * 131072) == 2  # 64 would take 2^28 scores
    assert cpu._chunk_queries(10, 9 * 10) == 10


def test_backend_selection():
    assert resolve_backend(torch.device("cpu")) == "cpu"
    assert resolve_backend(torch.device("cpu"), "reference") == "reference"
    with pytest.raises(ValueError, match="cpu backend needs a CPU device"):
        resolve_backend(torch.device("meta"), "cpu")


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma2", "gemma3_text", "bert", "gpt_oss"])
def test_traced_models_keep_their_logits_and_match_the_reference_backend(name):
    """Tiny models (GQA, sliding windows, softcap, bidirectional, learned sinks), a right-padded batch: backend
    "cpu" leaves the model's output that of its own sdpa (eager for Gemma-2 and GPT-OSS) forward, and gives the
    reference's statistics."""
    model = build(name, "eager" if name in ("gemma2", "gpt_oss") else "sdpa")
    subject = workbench.load(model, device="cpu")
    ids = token_ids(2, 40)
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask)
        with workbench.capture(subject, backend="cpu"):
            traced = model(input_ids=ids, attention_mask=mask)
    read = "logits" if hasattr(plain, "logits") else "last_hidden_state"
    keep = mask.bool()[..., None]  # padding positions are the model's own business
    torch.testing.assert_close(getattr(traced, read) * keep, getattr(plain, read) * keep, atol=1e-5, rtol=1e-5)
    matrix.check_traces_agree(subject, [ids[0].tolist(), ids[1, :30].tolist()], "cpu", 1e-5)


def test_inputs_that_need_gradients_take_the_differentiable_reference():
    """'auto' never hands autograd inputs to the CPU path (it computes no gradients): the reference runs, and
    the gradient of the output flows back to q."""
    from workbench import kernels

    q, k, v = (torch.randn(1, 2, 9, 8, dtype=torch.float32, requires_grad=i == 0) for i in range(3))
    out, stats = kernels.attention(q, k, v, stats=("entropy",))
    want_out, want = reference.attention(q.detach(), k, v, stats=("entropy",))
    torch.testing.assert_close(stats["entropy"].detach(), want["entropy"])
    torch.testing.assert_close(out.detach(), want_out)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
