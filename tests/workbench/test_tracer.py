"""The tracer on tiny random-init models of every supported architecture.

Checks: tracing leaves the model's outputs equal to its own sdpa/eager run (1e-5 in float32); every
statistic equals the one computed from the model's own eager attention weights (output_attentions=True),
which is the brute-force reference at the model level (1e-5); padding does not change per-sequence
statistics; patterns equal the eager weights; the attention implementation is restored, also on error.
"""

import math

import pytest
import torch
from tiny_models import CONFIGS, NO_SDPA, build, token_ids

import workbench
from workbench.errors import HeadNotFoundError, WorkbenchError

STATS = ("entropy", "sink_mass", "max_prob", "argmax_key", "lse", "received", "window_distance", "self_mass")


def reference_impl(name):
    return "eager" if name in NO_SDPA else "sdpa"


def model_output(model, ids, mask=None):
    out = model(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_tracing_leaves_outputs_unchanged(name):
    model = build(name, reference_impl(name))
    subject = workbench.load(model)
    ids = token_ids(2, 24)
    with torch.no_grad():
        plain = model_output(model, ids)
        with workbench.capture(subject, stats=STATS) as cap:
            traced = model_output(model, ids)
    torch.testing.assert_close(traced, plain, atol=1e-5, rtol=1e-5)
    assert sorted(cap.records) == list(range(subject.adapter.n_layers))
    assert model.config._attn_implementation == reference_impl(name)


def stats_from_weights(attn: torch.Tensor, causal: bool, sink=(0,)) -> dict[str, torch.Tensor]:
    """Statistics read off materialized attention weights [B, H, L, L] (no padding), float64."""
    p = attn.double()
    L = p.shape[-1]
    logp = torch.where(p > 0, p.log(), torch.zeros_like(p))
    dist = (torch.arange(L)[:, None] - torch.arange(L)[None]).abs().double()
    return {
        "entropy": -(p * logp).sum(-1),
        "sink_mass": p[..., list(sink)].sum(-1),
        "max_prob": p.max(-1).values,
        "window_distance": (p * dist).sum(-1),
        "self_mass": p.diagonal(0, -2, -1),
        "received": p.sum(-2),
    }


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_statistics_equal_the_models_own_attention_weights(name):
    eager = build(name, "eager")
    ids = token_ids(2, 20, seed=1)
    with torch.no_grad():
        weights = eager(input_ids=ids, output_attentions=True).attentions
    trace = workbench.trace(workbench.load(build(name, reference_impl(name))), ids, stats=STATS)
    causal = name != "bert"
    for layer, attn in enumerate(weights):
        want = stats_from_weights(attn, causal)
        for stat, value in want.items():
            torch.testing.assert_close(trace.stats[stat][layer].double(), value, atol=1e-5, rtol=1e-5,
                                       msg=f"{name} layer {layer} {stat}")
        top = attn.max(-1).values
        chosen = attn.gather(-1, trace.stats["argmax_key"][layer][..., None]).squeeze(-1)
        torch.testing.assert_close(chosen, top, atol=1e-6, rtol=0)  # argmax up to ties


def test_sliding_layers_count_only_their_window():
    """Gemma-3 style: 5 sliding layers (window 4) then one full layer; statistics see only visible keys."""
    subject = workbench.load(build("gemma3_text"))
    trace = workbench.trace(subject, token_ids(1, 16), stats=("window_distance", "sink_mass"))
    for layer, kind in enumerate(subject.adapter.layer_types):
        dist = trace.stats["window_distance"][layer]
        if kind == "sliding_attention":
            assert dist.max() <= 3 + 1e-5  # keys at distance < 4 only
            assert trace.stats["sink_mass"][layer][..., 4:].abs().max() == 0  # token 0 out of the window
        else:
            assert dist.max() > 3
    assert subject.adapter.layer_types.count("sliding_attention") == 5


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_gives_the_same_per_sequence_statistics(side):
    model = build("llama")
    model.generation_config.pad_token_id = 0
    subject = workbench.load(model)
    seqs = [token_ids(1, n, seed=n)[0].tolist() for n in (9, 16, 12)]
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        span = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[b, span], mask[b, span] = torch.tensor(s), 1
    with torch.no_grad(), workbench.capture(subject, stats=STATS) as cap:
        model(input_ids=ids, attention_mask=mask)
    padded = workbench.Trace(
        model_id="x", config=subject.adapter.facts(), token_ids=ids, attention_mask=mask.bool(),
        tokens=[[""] * width] * len(seqs),
        stats={n: torch.stack([cap.records[i][n] for i in range(2)]) for n in STATS},
    )
    for b, s in enumerate(seqs):
        alone = workbench.trace(subject, [s], stats=STATS)
        for stat in STATS:
            torch.testing.assert_close(padded.sequence(stat, b), alone.sequence(stat, 0), atol=1e-5, rtol=1e-5,
                                       msg=f"{side} {b} {stat}")
        assert not torch.isnan(padded.sequence("entropy", b)).any()


def test_patterns_equal_eager_weights():
    eager = build("qwen2", "eager")
    ids = token_ids(2, 18, seed=4)
    with torch.no_grad():
        weights = eager(input_ids=ids, output_attentions=True).attentions
    subject = workbench.load(build("qwen2"))
    trace = workbench.trace(subject, ids, stats=(), patterns=[(0, 1), (1, 3)], pattern_window=(5, 15))
    for layer, head in [(0, 1), (1, 3)]:
        torch.testing.assert_close(trace.patterns[(layer, head)], weights[layer][:, head, 5:15, 5:15],
                                   atol=1e-6, rtol=0)


def test_hidden_states_are_the_models():
    model = build("gpt2")
    ids = token_ids(1, 10)
    with torch.no_grad():
        want = model(input_ids=ids, output_hidden_states=True).hidden_states
    trace = workbench.trace(workbench.load(model), ids, stats=("entropy",), hidden_states=True)
    assert trace.hidden_states.shape == (3, 1, 10, 32)
    torch.testing.assert_close(trace.hidden_states, torch.stack(want), atol=1e-5, rtol=1e-5)


def test_capture_restores_the_model_on_error():
    model = build("llama")
    subject = workbench.load(model)
    with pytest.raises(RuntimeError, match="boom"):
        with workbench.capture(subject):
            assert model.config._attn_implementation == "workbench"
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


def test_bad_heads_and_lengths_raise_clear_errors():
    subject = workbench.load(build("llama"))
    with pytest.raises(HeadNotFoundError, match=r"\(5, 0\)"):
        workbench.trace(subject, token_ids(1, 8), patterns=[(5, 0)])
    with pytest.raises(HeadNotFoundError, match=r"\(1, 4\)"):
        workbench.trace(subject, token_ids(1, 8), patterns=[(1, 4)])
    with pytest.raises(workbench.ContextLengthError, match="65 tokens"):
        workbench.trace(subject, token_ids(1, 65))
    with pytest.raises(WorkbenchError, match="vocabulary"):
        workbench.trace(subject, [[1, 2, 500]])
    with pytest.raises(ValueError, match="unknown statistic"):
        workbench.trace(subject, token_ids(1, 8), stats=("entropy", "bogus"))
    with pytest.raises(ValueError, match="triton backend needs a CUDA device"):
        workbench.trace(subject, token_ids(1, 8), backend="triton")


def test_entropy_of_uniform_attention_is_log_of_visible_keys():
    """Zeroed query weights make every score equal: entropy must be log(i + 1) at position i (known answer)."""
    model = build("llama")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
    trace = workbench.trace(workbench.load(model), token_ids(1, 12), stats=("entropy", "sink_mass", "received"))
    want = torch.log(torch.arange(1, 13, dtype=torch.float64))
    torch.testing.assert_close(trace.stats["entropy"][:, 0].double(), want.expand(2, 4, 12), atol=1e-5, rtol=0)
    torch.testing.assert_close(trace.stats["sink_mass"][0, 0, 0].double(), 1 / torch.arange(1, 13).double(),
                               atol=1e-6, rtol=0)
    harmonic = torch.tensor([sum(1 / i for i in range(j + 1, 13)) for j in range(12)], dtype=torch.float64)
    torch.testing.assert_close(trace.stats["received"][0, 0, 0].double(), harmonic, atol=1e-5, rtol=0)
    assert math.isclose(float(trace.stats["entropy"][0, 0, 0, 0]), 0.0, abs_tol=1e-7)
