"""Head composition against dense matrices built literally, the per-head weights against the model's own
projections, RoPE's distance matrices against the model's rotary embedding, the component removal against its
definition, and the known answers of the zoo models (induction-2l's previous-token -> induction K-composition)."""

import functools

import numpy as np
import pytest
import torch
from tiny_models import build, tokenizer
from transformers import AttentionInterface

import workbench
from workbench.errors import WorkbenchError
from workbench.head_outputs import head_output_hook
from workbench.interventions.components import project_out, remove_components
from workbench.probes import tasks as T
from workbench.probes.circuits.graph import on_input, sites
from workbench.probes.composition import KINDS, carrying_components, composition_scores, ov_directions
from workbench.probes.weights import PROJECTIONS, head_weights, rope_matrices

DISTANCES = (0, 3, 7)


@functools.cache
def tiny(name):
    return workbench.load(build(name).double(), tokenizer=tokenizer())


@functools.cache
def zoo(name):
    return workbench.load(name, device="cpu")


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def _capture_attention(module, query, key, value, attention_mask, **kwargs):
    """AttentionInterface entry that keeps each layer's q, k (after the model's RoPE and q/k norms) and v."""
    _CAPTURED[module] = (query, key, value)
    return torch.zeros_like(query).transpose(1, 2).contiguous(), None


_CAPTURED: dict = {}
AttentionInterface.register("composition_capture", _capture_attention)
FAMILIES = sorted(PROJECTIONS)  # every architecture head_weights reads
MIXTURES = ("gpt_oss", "mixtral", "qwen3_moe")


@pytest.mark.parametrize("name", FAMILIES)
def test_head_weights_and_rope_are_the_models_attention(name):
    """In the model's own forward, every head's q, k, v (after its norms and rotary embedding) from the residual x
    that enters the layer: v = x W_V and, between positions i and j = i - t, q_i . k_j = x_i W_Q P(t) W_K^T x_j^T,
    each up to the per-token scale of the norms (compared as cosines). z W_O is the head's term of the output
    projection. Fused projections (GPT-NeoX, Phi-3), partial rotary dimensions (GPT-NeoX), interleaved rotary
    pairs (Cohere), per-layer RoPE (Gemma-3), query/key norms per head (Qwen3, Gemma-3) and over all heads
    (OLMo-2), and a branch without a pre-norm (OLMo-2). Tolerance 1e-6: RMSNorms and rotary angles compute in
    float32 even in a float64 model (relative error about 1e-7); the mixtures of experts run in float32 (their grouped
    matrix products have no float64 kernel), 2e-5 for sums of 32 float32 products."""
    dtype, tol = (torch.float32, 2e-5) if name in MIXTURES else (torch.float64, 1e-6)
    model = build(name).to(dtype)
    model.set_attn_implementation("composition_capture")
    subject = workbench.load(model, tokenizer=tokenizer())
    a, w = subject.adapter, head_weights(subject)
    residuals = {}
    hooks = [on_input(module, lambda x, l=l: residuals.__setitem__(l, x[0].detach()))
             for l, module in enumerate(sites(subject).attn_inputs)]
    try:
        _CAPTURED.clear()
        with torch.no_grad():
            model(input_ids=torch.randint(3, 90, (1, 12), generator=torch.Generator().manual_seed(2)))
    finally:
        for hook in hooks:
            hook.remove()
    group = a.n_heads // a.n_kv_heads
    for layer, attn in enumerate(a.attention_modules):
        q, k, v = (t[0] for t in _CAPTURED[attn])  # [heads, positions, dh]
        x = residuals[layer]
        rope = rope_matrices(subject, DISTANCES, layer)
        for head in range(a.n_heads):
            kv = head // group
            torch.testing.assert_close(unit(v[kv]), unit(x @ w.W_V[layer, head].to(dtype)), rtol=0, atol=tol)
            for n, t in enumerate(DISTANCES):
                i, j = torch.arange(t, 12), torch.arange(0, 12 - t)
                x_i, x_j = x[i].double(), x[j].double()
                p_t = torch.eye(a.head_dim, dtype=torch.float64) if rope is None else rope[n]
                want = (unit(x_i @ w.W_Q[layer, head]) @ p_t * unit(x_j @ w.W_K[layer, head])).sum(-1)
                got = (unit(q[head, i].double()) * unit(k[kv, j].double())).sum(-1)
                torch.testing.assert_close(got, want, rtol=0, atol=tol, msg=lambda m, l=layer, h=head, t=t:
                                           f"{name} L{l}H{h} t={t}: {m}")
            z = torch.zeros(5, a.n_heads, a.head_dim, dtype=dtype)
            z[:, head] = torch.randn(5, a.head_dim, dtype=dtype)
            proj = a.out_projections[layer]
            torch.testing.assert_close(proj(z.reshape(5, -1)) - proj(torch.zeros_like(z.reshape(5, -1))),
                                       z[:, head] @ w.W_O[layer, head].to(dtype), rtol=0,
                                       atol=1e-10 if tol < 1e-5 else tol)
    assert (rope_matrices(subject, DISTANCES) is None) == (name == "gpt2")
    if name == "gemma3_text":  # its last layer is global: RoPE at another frequency than the local layers'
        assert not torch.allclose(rope_matrices(subject, DISTANCES, 0), rope_matrices(subject, DISTANCES, 5))


def test_unread_architectures_are_refused():
    with pytest.raises(WorkbenchError, match="'bert' is not one of them"):
        head_weights(workbench.load(build("bert"), tokenizer=tokenizer()))


def dense_scores(subject, distances):
    """{kind: [L, H, L, H]} from [d, d] matrices: RMS over the distances of |A B| / (|A| |B|)."""
    a, w = subject.adapter, head_weights(subject)
    out = {kind: np.full((a.n_layers, a.n_heads, a.n_layers, a.n_heads), np.nan) for kind in KINDS}
    fro = torch.linalg.matrix_norm
    for l1 in range(a.n_layers):
        for h1 in range(a.n_heads):
            ov = w.ov(l1, h1)
            for l2 in range(l1 + 1, a.n_layers):
                rope = rope_matrices(subject, distances, l2)
                rotations = [None] if rope is None else list(rope)
                for h2 in range(a.n_heads):
                    qk = [w.qk(l2, h2, p) for p in rotations]
                    ov2 = w.ov(l2, h2)
                    rms = lambda products: np.sqrt(np.mean(np.square(products)))  # noqa: E731
                    out["q"][l1, h1, l2, h2] = rms([float(fro(ov @ m) / fro(ov) / fro(m)) for m in qk])
                    out["k"][l1, h1, l2, h2] = rms([float(fro(ov @ m.T) / fro(ov) / fro(m)) for m in qk])
                    out["v"][l1, h1, l2, h2] = float(fro(ov @ ov2) / fro(ov) / fro(ov2))
    return out


@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_neox", "gemma3_text"])
def test_composition_equals_dense_matrices(name):
    """Every pair's Q-, K- and V-composition (RMS over the RoPE distances) equals the literal [d, d] computation;
    the components equal those of a dense SVD of W_OV, and their squares sum to the score's square."""
    subject = tiny(name)
    result = composition_scores(subject, DISTANCES)
    dense = dense_scores(subject, DISTANCES)
    for kind in KINDS:
        np.testing.assert_allclose(result.arrays[f"{kind}_composition"], dense[kind], rtol=1e-9, atol=1e-12)
    w, a = head_weights(subject), subject.adapter
    _, s, vt = torch.linalg.svd(w.ov(0, 1))
    np.testing.assert_allclose(result.arrays["singular_values"][0, 1], s[:a.head_dim], rtol=1e-9)
    receiver = w.ov(1, 2)
    expected = s[:a.head_dim] * (vt[:a.head_dim] @ receiver).norm(dim=-1) / s.norm() / receiver.norm()
    np.testing.assert_allclose(result.arrays["v_components"][0, 1, 1, 2], expected, rtol=1e-9)
    pairs = result.metric("k_composition")
    assert len(pairs) == a.n_heads ** 2 * a.n_layers * (a.n_layers - 1) // 2
    row = pairs[(pairs.layer == 1) & (pairs["head"] == 0) & (pairs.source_layer == 0) & (pairs.source_head == 3)]
    assert float(row.value.iloc[0]) == pytest.approx(dense["k"][0, 3, 1, 0], rel=1e-9)
    ranked = carrying_components(result, (0, 1), (1, 2), "v", k=a.head_dim)
    assert ranked.share.sum() == pytest.approx(1.0) and list(ranked.score) == sorted(ranked.score, reverse=True)
    with pytest.raises(ValueError, match="not in an earlier layer"):
        carrying_components(result, (1, 0), (0, 1))


def test_project_out_removes_the_directions_from_what_the_head_writes():
    """Under project_out, head (0, 1) writes z W_O (I - D^T D) for its unedited output z; other heads are
    untouched; directions outside what the head can write are refused."""
    subject = tiny("llama")
    w = head_weights(subject)
    d = ov_directions(subject, (0, 1), [0, 2])
    ids = subject.encode([[5, 9, 14, 3, 22, 7]])
    seen = {}
    with torch.no_grad(), head_output_hook(subject, lambda l, x: seen.setdefault(("plain", l), x.clone())):
        subject.model(**ids)
    with torch.no_grad(), project_out(subject, {(0, 1): d}), \
            head_output_hook(subject, lambda l, x: seen.setdefault(("edited", l), x.clone())):
        subject.model(**ids)
    plain, edited = seen[("plain", 0)], seen[("edited", 0)]
    o = w.W_O[0, 1]
    expected = plain[..., 1, :] @ o @ (torch.eye(o.shape[1], dtype=torch.float64) - d.T @ d)
    torch.testing.assert_close(edited[..., 1, :] @ o, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(edited[..., [0, 2, 3], :], plain[..., [0, 2, 3], :], rtol=0, atol=0)
    outside = torch.randn(1, o.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(workbench.WorkbenchError, match="span"), project_out(subject, {(0, 1): unit(outside)}):
        pass


def test_induction_2l_previous_token_head_k_composes_with_every_induction_head():
    """Model card: L0.H1 is the previous-token head, L1.* the induction heads. For each L1 head, L0.H1's
    K-composition is its strongest composition of all, Q, K or V from any L0 head: measured 0.22-0.23, against
    0.16-0.17 for the next (L0.H3's K-composition; L0.H3 is the card's second previous-token head, 0.22) and at
    most 0.09 for any Q- or V-composition."""
    result = composition_scores(zoo("induction-2l"))
    for receiver in range(4):
        scores = np.stack([result.arrays[f"{kind}_composition"][0, :, 1, receiver] for kind in KINDS])  # [kind, h]
        ranked = np.sort(scores, axis=None)
        assert scores[1, 1] == ranked[-1] and ranked[-1] >= 1.25 * ranked[-2], (receiver, scores)
        assert scores[[0, 2]].max() < 0.5 * scores[1, 1]


def test_removing_the_carrying_components_breaks_induction_on_induction_2l():
    """L0.H1's K-composition into the induction head L1.H0 is spread over the 14 largest of its 32 output
    directions (they carry 99% of the squared score: the head writes which of 510 tokens came before). Taking
    the 16 that carry most out of L0.H1's output breaks the induction task, the 16 that carry least do nothing:
    measured logit difference 16.2 -> 5.0 against 16.4."""
    subject = zoo("induction-2l")
    task = T.induction(subject, n=8)
    result = composition_scores(subject)
    ranked = carrying_components(result, (0, 1), (1, 0), "k", k=subject.adapter.head_dim)
    assert ranked.share.head(16).sum() > 0.99
    order = [int(i) for i in ranked.component]
    plain = float(T.evaluate(subject, task)["logit_diff"].mean())
    with remove_components(subject, {(0, 1): order[:16]}):
        carrying = float(T.evaluate(subject, task)["logit_diff"].mean())
    with remove_components(subject, {(0, 1): order[-16:]}):
        others = float(T.evaluate(subject, task)["logit_diff"].mean())
    assert carrying < 0.5 * plain and others > 0.95 * plain, (plain, carrying, others)


def test_organism_ioi_circuit_heads_read_the_previous_token_heads_through_their_keys():
    """organism's IOI circuit (L2.H1, L3.H0, L3.H3, L3.H4: tests/probes/circuits) holds the card's induction heads
    L3.H0 and L3.H3 (0.794, 0.792). Into each, the three strongest K-composition senders of all 18 heads of
    layers 0-2 are the card's two previous-token heads L1.H1 and L2.H5 (0.872, 0.449) and the circuit's L2.H1:
    measured 0.158 / 0.136 / 0.097 into L3.H0 and 0.163 / 0.132 / 0.120 into L3.H3 (median over all pairs 0.06)."""
    result = composition_scores(zoo("organism"))
    for receiver in ((3, 0), (3, 3)):
        column = result.arrays["k_composition"][:3, :, receiver[0], receiver[1]]
        top = {tuple(int(x) for x in np.unravel_index(i, column.shape)) for i in np.argsort(-column, axis=None)[:3]}
        assert top == {(1, 1), (2, 5), (2, 1)}, (receiver, column)


def test_compose_cli_prints_the_strongest_pairs_saves_and_stores(tmp_path):
    from typer.testing import CliRunner

    from workbench.cli import app
    from workbench.store import Store

    out = tmp_path / "out"
    run = CliRunner().invoke(app, ["compose", "--model", "induction-2l", "--top", "4", "--out", str(out)])
    assert run.exit_code == 0, run.output
    assert "L0.H1 -> L1.H1  0.231" in run.output
    assert {p.name for p in out.iterdir()} == {"composition.parquet", "composition_arrays.npz"}
    with Store() as db:
        rows = db.query("SELECT metric, count(*) AS n FROM head_metrics GROUP BY metric ORDER BY metric")
    assert list(rows.metric) == ["k_composition_max", "q_composition_max", "v_composition_max"]
    assert list(rows.n) == [4, 4, 4]  # one row per head of layer 1, the only layer with earlier heads
