"""Every probe against a brute-force computation: from the model's own eager attention weights, from
explicit loops over random patterns, or from planted synthetic statistics whose answer is known."""

import math

import numpy as np
import pytest
import torch
from tiny_models import build, token_ids

import workbench
from workbench.head_outputs import record_head_outputs
from workbench.probes.entropy import entropy_profile, future_attention_influence, local_global
from workbench.probes.erank import effective_rank, head_output_erank, hidden_state_erank
from workbench.probes.heads import head_similarity, head_types, type_scores
from workbench.probes.sinks import massive_activations, secondary_sinks, sink_scores

ATOL = 1e-5  # float32 statistics against float64 brute force


@pytest.fixture(scope="module")
def llama_run():
    """A trace of a tiny Llama and the eager attention weights of the same model on the same ids."""
    ids = token_ids(2, 20, seed=3)
    eager = build("llama", "eager")
    with torch.no_grad():
        weights = torch.stack(eager(input_ids=ids, output_attentions=True).attentions).double()  # [l, b, h, q, k]
    trace = workbench.trace(workbench.load(build("llama")), ids, distance_cap=5, hidden_states=True)
    return trace, weights


def test_sink_scores(llama_run):
    trace, w = llama_run
    result = sink_scores(trace, eps=0.1)
    want = w[..., 1:, 0].mean(dim=(1, 3)).numpy()  # rows after the first
    np.testing.assert_allclose(result.head_matrix("sink_score"), want, atol=ATOL)
    layer_share = result.metric("sink_share")
    np.testing.assert_allclose(layer_share.value[:2], (want > 0.1).mean(1))
    assert layer_share.value.iloc[2] == pytest.approx((want > 0.1).mean())


def test_entropy_profile(llama_run):
    trace, w = llama_run
    logp = torch.where(w > 0, w.log(), torch.zeros_like(w))
    ent = -(w * logp).sum(-1)  # [l, b, h, q]
    result = entropy_profile(trace)
    np.testing.assert_allclose(result.head_matrix("entropy_mean"), ent.mean(dim=(1, 3)).numpy(), atol=ATOL)
    flat = ent.permute(0, 2, 1, 3).flatten(2)
    np.testing.assert_allclose(result.head_matrix("entropy_median"), flat.median(-1).values.numpy(), atol=ATOL)
    log_keys = torch.log(torch.arange(1, 21, dtype=torch.float64))
    norm = (ent[..., 1:] / log_keys[1:]).permute(0, 2, 1, 3).flatten(2).mean(-1)
    np.testing.assert_allclose(result.head_matrix("entropy_norm"), norm.numpy(), atol=ATOL)
    np.testing.assert_allclose(result.arrays["entropy_by_position"], ent.mean(dim=(1, 2)).numpy(), atol=ATOL)


def test_local_global_and_fai(llama_run):
    trace, w = llama_run
    dist = (torch.arange(20)[:, None] - torch.arange(20)[None]).abs().clamp_max(5).double()
    waad = (w * dist).sum(-1).mean(dim=(1, 3)).numpy()
    result = local_global(trace, threshold=0.5)
    np.testing.assert_allclose(result.head_matrix("waad"), waad, atol=ATOL)
    np.testing.assert_array_equal(result.head_matrix("is_local"), (waad / 5 < 0.5).astype(float))
    fai = future_attention_influence(trace)
    later = w[:, 0].sum(-2) - w[:, 0].diagonal(0, -2, -1)  # from the queries i > j
    want = later / torch.arange(19, -1, -1).double()  # 19 - j of them; none for the last token (NaN)
    np.testing.assert_allclose(fai.arrays["fai"], want.numpy(), atol=ATOL)
    assert np.isnan(fai.arrays["fai"][..., -1]).all() and not np.isnan(fai.arrays["fai"][..., :-1]).any()


def planted_trace(received: torch.Tensor, hidden=None) -> workbench.Trace:
    """A Trace with given `received` [layer, 1, head, n] for a causal model, no padding."""
    n_layers, _, n_heads, n = received.shape
    return workbench.Trace(
        model_id="planted", config={"n_layers": n_layers, "n_heads": n_heads, "is_causal": True},
        token_ids=torch.arange(n)[None], attention_mask=torch.ones(1, n, dtype=torch.bool),
        tokens=[[f"t{i}" for i in range(n)]], stats={"received": received}, hidden_states=hidden)


def test_secondary_sinks_on_planted_levels():
    n, layers, heads = 16, 6, 3
    uniform = torch.tensor([sum(1 / (i + 1) for i in range(j, n)) for j in range(n)])
    received = uniform.expand(layers, 1, heads, n).clone()
    received[1:4, 0, 2, 5] = uniform[5] * 8  # token 5: a sink in layers 1-3, head 2
    received[5, 0, 0, 5] = uniform[5] * 8  # and again in layer 5
    received[2, 0, 1, 14] = uniform[14] * 50  # too late in the sequence to judge (2 queries see it)
    result = secondary_sinks(planted_trace(received), ratio=5.0, min_queries=4)
    hits = result.metric("received_ratio")
    found = sorted(zip(hits.layer, hits["head"], hits.position, strict=True))
    assert found == [(1, 2, 5), (2, 2, 5), (3, 2, 5), (5, 0, 5)]
    np.testing.assert_allclose(hits.value, 8.0, rtol=1e-6)
    levels = {m: result.metric(m).value.item() for m in ("first_layer", "last_layer", "n_layers", "persistence",
                                                           "n_heads")}
    assert levels == {"first_layer": 1, "last_layer": 5, "n_layers": 4, "persistence": 3, "n_heads": 4}
    assert result.metric("first_layer").token.item() == "t5"


def test_massive_activations_finds_the_planted_entries():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 1, 10, 64, generator=g)
    hidden[2, 0, 0, 7] = 3000.0
    hidden[1, 0, 4, 9] = -2500.0
    trace = planted_trace(torch.zeros(2, 1, 1, 10), hidden)
    result = massive_activations(trace, factor=100.0)
    found = result.metric("massive_activation")
    entries = sorted(zip(found.layer, found.position, found.dim, found.value, strict=True))
    assert entries == [(1, 4, 9, 2500.0), (2, 0, 7, 3000.0)]
    median = hidden[2].abs().median()
    assert result.metric("massive_ratio").value.max() == pytest.approx(3000.0 / float(median), rel=1e-6)


def test_type_scores_against_loops():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 6, (2, 15), generator=g)  # small vocabulary: many duplicates
    p = torch.rand(2, 3, 15, 15, generator=g).tril()
    p = p / p.sum(-1, keepdim=True)
    got = type_scores(p, ids)
    for h in range(3):
        prev, dup, ind, rows = [], [], [], 0
        for b in range(2):
            for i in range(15):
                if i >= 1:
                    prev.append(p[b, h, i, i - 1].item())
                earlier = [j for j in range(i) if ids[b, j] == ids[b, i]]
                if earlier:
                    rows += 1
                    dup.append(sum(p[b, h, i, j].item() for j in earlier))
                    ind.append(sum(p[b, h, i, j + 1].item() for j in earlier if j + 1 < i))
        assert got["prev_token"][h] == pytest.approx(np.mean(prev))
        assert got["duplicate_token"][h] == pytest.approx(sum(dup) / rows)
        assert got["induction"][h] == pytest.approx(sum(ind) / rows)


def test_head_similarity_against_loops():
    g = torch.Generator().manual_seed(2)
    patterns = {(l, h): torch.softmax(torch.randn(2, 7, 7, generator=g), -1) for l in range(2) for h in range(2)}
    sim = head_similarity(patterns, 2, 2)
    a, b = patterns[(0, 1)], patterns[(1, 0)]
    tv = 0.5 * (a - b).abs().sum(-1).mean()
    assert sim[1, 2] == pytest.approx(1 - float(tv))
    np.testing.assert_allclose(np.diag(sim), 1.0)


def test_effective_rank_known_answers():
    assert effective_rank(torch.eye(7)) == pytest.approx(7.0)
    assert effective_rank(torch.outer(torch.randn(9), torch.randn(5))) == pytest.approx(1.0, abs=1e-6)
    x = torch.randn(12, 6, dtype=torch.float64)
    s = np.linalg.svd(x.numpy(), compute_uv=False)
    p = s / s.sum()
    assert effective_rank(x) == pytest.approx(math.exp(-(p * np.log(p)).sum()))


def test_hidden_state_erank(llama_run):
    trace, _ = llama_run
    result = hidden_state_erank(trace, positions=[0, 3, 5, -1], batch=1)
    want = [effective_rank(h[1][[0, 3, 5, 19]]) for h in trace.hidden_states]
    np.testing.assert_allclose(result.arrays["erank"], want)
    with pytest.raises(workbench.WorkbenchError, match=r"\[25\]"):
        hidden_state_erank(trace, positions=[25])


def test_head_outputs_are_the_output_projections_input():
    subject = workbench.load(build("llama"))
    ids = token_ids(1, 9)
    outputs, _ = record_head_outputs(subject, ids)
    seen = {}
    handle = subject.model.model.layers[1].self_attn.register_forward_hook(lambda m, a, out: seen.update(o=out[0]))
    with torch.no_grad():
        subject.model(input_ids=ids)
    handle.remove()
    o_proj = subject.model.model.layers[1].self_attn.o_proj
    torch.testing.assert_close(o_proj(outputs[1, 0].reshape(9, 32)), seen["o"][0], atol=1e-5, rtol=1e-5)
    erank = head_output_erank(subject, ids)
    assert erank.head_matrix("erank")[1, 2] == pytest.approx(effective_rank(outputs[1, 0, :, 2]))


def test_head_types_on_a_copying_model():
    """Known answer: with zeroed query weights every row is uniform, so prev_token = mean 1/(i+1)."""
    model = build("llama")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
    result = head_types(workbench.load(model), length=10, batch=2)
    want = np.mean([1 / (i + 1) for i in range(1, 20)])
    np.testing.assert_allclose(result.head_matrix("prev_token"), want, atol=1e-6)
    np.testing.assert_allclose(result.arrays["similarity"], 1.0, atol=1e-6)
