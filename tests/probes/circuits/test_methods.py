"""Each circuit method against a brute-force computation on tiny random models (float64 where a derivative is
taken): the split-receiver graph is transparent, EAP is the derivative of path patching, EAP-IG is complete,
head / residual / pattern patching equal independent constructions, patching an input with itself changes
nothing, and faithfulness's mean ablation equals a prompt-by-prompt construction."""

import pytest
import torch
from tiny_models import CONFIGS, build, token_ids, tokenizer

import workbench
from workbench.head_outputs import head_output_hook, record_head_outputs
from workbench.interventions import ablate
from workbench.probes import tasks as T
from workbench.probes.circuits.circuit import circuit_metric, faithfulness
from workbench.probes.circuits.discover import find_circuit
from workbench.probes.circuits.eap import attribution_scores
from workbench.probes.circuits.graph import SITES, ReceiverDeltas, record, senders, sites, split_receivers
from workbench.probes.circuits.patching import patch_heads, patch_patterns, patch_residual, pattern_patching
from workbench.probes.circuits.path_patching import path_patch


def tiny(name="llama", double=False):
    model = build(name)
    return workbench.load(model.double() if double else model, tokenizer=tokenizer())


def tiny_task(n=3, length=7, corrupt=(2,), seed=0, same=False):
    """Random token prompts; the corrupted prompt differs at positions `corrupt` (or not at all: same=True)."""
    clean = token_ids(n, length, seed)
    corrupted = clean.clone()
    if not same:
        for p in corrupt:
            corrupted[:, p] = (clean[:, p] + 7) % 90 + 3
    return T.Task("tiny", [T.Example(tuple(c.tolist()), tuple(k.tolist()), 5 + i, 9 + i, "")
                           for i, (c, k) in enumerate(zip(clean, corrupted, strict=True))])


def metric(subject, task, which="clean"):
    return float(T.evaluate(subject, task, which)[task.metric].mean())


@pytest.mark.parametrize("name", sorted(set(SITES) & set(CONFIGS)))
def test_split_receivers_are_transparent_and_senders_sum_to_the_residual(name):
    subject = tiny(name)
    ids = token_ids(3, 9)
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    enc["attention_mask"][1, 6:] = 0  # a padded row
    with torch.no_grad():
        want = subject.model(**enc, use_cache=False).logits
        with split_receivers(subject, ReceiverDeltas.zeros(subject, 3, 9)):
            got = subject.model(**enc, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    final = {}
    handle = sites(subject).final_norm.register_forward_pre_hook(lambda m, a: final.setdefault("x", a[0]))
    with torch.no_grad():
        subject.model(**enc, use_cache=False)
    handle.remove()
    acts = record(subject, enc)
    biases = sum(p.bias for p in subject.adapter.out_projections if getattr(p, "bias", None) is not None)
    total = acts.input + acts.heads.sum((0, 1)) + acts.mlps.sum(0) + biases
    torch.testing.assert_close(total, final["x"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, eps, tol", [("gpt2", 1e-4, 1e-6), ("llama", 1e-3, 2e-3), ("gemma2", 1e-3, 2e-3),
                                           ("gpt_neox", 1e-4, 1e-6), ("cohere", 1e-3, 2e-3), ("granite", 3e-3, 2e-3),
                                           ("olmo2", 1e-3, 2e-3)])
def test_eap_is_the_derivative_of_path_patching(name, eps, tol):
    """score(u -> v) = d/de M(edge carries e x delta_u) at e = 0, by central differences (the RMSNorms of Llama,
    Gemma-2, Granite and OLMo-2 and Cohere's LayerNorm compute in float32 even in a float64 model, hence their
    larger steps and looser tolerances). Gemma-2 has post-norms on each branch, OLMo-2 only those, GPT-NeoX and
    Cohere parallel blocks, Granite a residual multiplier. The mixtures of experts (Mixtral, Qwen3-MoE, GPT-OSS)
    have no float64 grouped matmul: they are checked in float32 by the transparency test above."""
    subject, task = tiny(name, double=True), tiny_task()
    edges = attribution_scores(subject, task, "eap")
    sample = edges.sample(6, random_state=0)
    pairs = list(zip(sample.source, sample.target, strict=True))
    up, down = path_patch(subject, task, pairs, scale=eps), path_patch(subject, task, pairs, scale=-eps)
    derivative = (up.patched.to_numpy() - down.patched.to_numpy()) / (2 * eps)
    scale = max(1e-3, float(abs(derivative).max()))
    assert abs(sample.score.to_numpy() - derivative).max() <= tol * scale


@pytest.mark.parametrize("name", sorted(set(SITES) & set(CONFIGS)))
def test_discovery_runs_on_every_architecture_and_keeping_everything_ablates_nothing(name):
    """EAP-IG, selection and mean ablation on each architecture: the graph has the edges its blocks allow (none
    from a layer's heads to its own MLP in a parallel block), and the circuit of every node is the whole model."""
    subject, task = tiny(name), tiny_task()
    circuit = find_circuit(subject, task, "eap-ig", top_k=6, steps=2, measure=False)
    own_mlp = circuit.edges.source.str.match(r"L\d+\.H") & (
        circuit.edges.source.str.extract(r"L(\d+)\.", expand=False) == circuit.edges.target.str[1:])
    assert own_mlp.any() != sites(subject).parallel
    assert circuit.edges.in_circuit.sum() == 6 and circuit.edges.score.abs().max() > 0
    assert circuit_metric(subject, task, set(senders(subject))) == pytest.approx(metric(subject, task), abs=1e-5)


def test_a_post_norm_residual_fails_naming_the_architecture():
    with pytest.raises(workbench.WorkbenchError, match="circuits need a residual stream that.*'bert'"):
        sites(tiny("bert"))


def test_eap_ig_is_complete_and_one_step_is_eap():
    """Integrated gradients are complete (Sundararajan et al. 2017): the input node's edges sum to
    M(corrupted) - M(clean) up to the Riemann sum's error; with one step (alpha = 1) EAP-IG is EAP."""
    subject, task = tiny("gpt2", double=True), tiny_task()
    ig = attribution_scores(subject, task, "eap-ig", steps=16)
    total = ig[ig.source == "input"].score.sum()
    want = metric(subject, task, "corrupted") - metric(subject, task)
    assert total == pytest.approx(want, rel=0.03)  # measured: 1.2% off with 16 steps, 0.6% with 32
    eap, one = attribution_scores(subject, task, "eap"), attribution_scores(subject, task, "eap-ig", steps=1)
    torch.testing.assert_close(torch.tensor(one.score.to_numpy()), torch.tensor(eap.score.to_numpy()))


def test_path_patching_into_the_logits_adds_the_senders_output_to_the_final_residual():
    subject, task = tiny("llama"), tiny_task(n=2)
    got = path_patch(subject, task, [("L0.H2", "logits")]).patched[0]
    clean, corrupted = (record_head_outputs(subject, [list(getattr(e, w)) for e in task.examples])[0]
                        for w in ("clean", "corrupted"))
    dh = subject.adapter.head_dim
    weight = subject.model.model.layers[0].self_attn.o_proj.weight[:, 2 * dh:3 * dh]
    delta = (corrupted[0, :, :, 2] - clean[0, :, :, 2]) @ weight.T
    handle = subject.model.model.norm.register_forward_pre_hook(lambda m, a: (a[0] + delta,))
    try:
        want = metric(subject, task)
    finally:
        handle.remove()
    assert got == pytest.approx(want, abs=1e-4)


def test_head_patching_equals_resampling_from_the_one_corrupted_prompt():
    subject = tiny("llama")
    task = tiny_task(n=1)
    table = patch_heads(subject, task).metric("patched").set_index(["layer", "head"]).value
    reference = [list(task.examples[0].corrupted)]
    for layer, head in [(0, 1), (1, 3)]:
        with ablate(subject, [(layer, head)], mode="resample", reference=reference):
            assert table[(layer, head)] == pytest.approx(metric(subject, task), abs=1e-5)


def test_residual_patching_at_layer_0_is_swapping_the_token():
    """In Llama the residual entering layer 0 is the token embedding: patching it at a position is swapping
    that position's token for the corrupted one."""
    subject, task = tiny("llama"), tiny_task(n=2, length=5, corrupt=(1, 3))
    rows = patch_residual(subject, task).metric("patched")
    for pos in range(5):
        swapped = T.Task("swap", [T.Example(e.clean[:pos] + e.corrupted[pos:pos + 1] + e.clean[pos + 1:], None,
                                            e.answer, e.wrong, "") for e in task.examples])
        got = rows[(rows.layer == 0) & (rows.position == pos)].value.item()
        assert got == pytest.approx(metric(subject, swapped), abs=1e-5)


def test_pattern_patching_mixes_the_source_pattern_with_the_target_values():
    subject, task = tiny("llama"), tiny_task(n=2)
    with torch.no_grad(), pattern_patching(subject) as recorded:
        plain = subject.model(input_ids=torch.tensor([e.clean for e in task.examples])).logits
    torch.testing.assert_close(plain, subject.model(input_ids=torch.tensor([e.clean for e in task.examples])).logits,
                               atol=1e-5, rtol=1e-5)
    eager = build("llama", "eager")
    with torch.no_grad():
        out = eager(input_ids=torch.tensor([e.corrupted for e in task.examples]), output_attentions=True)
        source = out.attentions[1][:, 2]  # layer 1, head 2 of the corrupted run
        hidden = eager(input_ids=torch.tensor([e.clean for e in task.examples]), output_hidden_states=True,
                       output_attentions=True)
        layer = eager.model.layers[1]
        x = layer.input_layernorm(hidden.hidden_states[1])
        v = layer.self_attn.v_proj(x).view(2, 7, 2, 8)[:, :, 1]  # head 2 reads kv head 1 (2 query heads per kv)
    with pattern_patching(subject, {1: {2: source}}):
        z, _ = record_head_outputs(subject, [list(e.clean) for e in task.examples])
    torch.testing.assert_close(z[1, :, :, 2], source @ v, atol=1e-5, rtol=1e-5)
    for layer in (0, 1):  # the recorded patterns are eager attention's
        torch.testing.assert_close(recorded[layer], hidden.attentions[layer], atol=1e-5, rtol=1e-5)


def test_patching_an_input_with_itself_changes_nothing():
    subject, task = tiny("llama"), tiny_task(n=2, same=True)
    base = metric(subject, task)
    for result in (patch_heads(subject, task), patch_residual(subject, task), patch_patterns(subject, task)):
        assert abs(result.metric("effect").value).max() < 1e-5, result.probe
    assert abs(path_patch(subject, task, [("L0.H1", "L1.H0"), ("input", "logits")]).effect).max() < 1e-5
    assert abs(attribution_scores(subject, task, "eap").score).max() < 1e-6
    assert metric(subject, task) == base


def test_faithfulness_ablates_with_each_groups_mean_at_each_position():
    """circuit_metric against a one-prompt-at-a-time construction: every head and MLP outside the circuit gets the
    mean, position by position, of its outputs on the corrupted prompts of the example's group and length."""
    subject = tiny("llama", double=True)
    prompts = [(token_ids(1, n, seed)[0], g) for seed, (n, g) in enumerate([(7, "a"), (7, "a"), (7, "b"), (9, "a"),
                                                                             (7, "a")])]
    examples = [T.Example(tuple(c.tolist()), tuple(((c + 5) % 90 + 3).tolist()), 5, 9, "", g) for c, g in prompts]
    task = T.Task("grouped", examples)
    nodes = {"L0.H1", "L1.H0", "M1"}
    mlps = sites(subject).mlps

    def outputs(ids):
        kept = {}
        hooks = [m.register_forward_hook(lambda m, a, o, l=l: kept.__setitem__(l, o[0])) for l, m in enumerate(mlps)]
        z, _ = record_head_outputs(subject, [list(ids)])
        for h in hooks:
            h.remove()
        return z[:, 0], torch.stack([kept[l] for l in range(2)])

    want = []
    for e in examples:
        group = [outputs(o.corrupted) for o in examples if (o.group, len(o.clean)) == (e.group, len(e.clean))]
        z_mean = torch.stack([z for z, _ in group]).mean(0)
        m_mean = torch.stack([m for _, m in group]).mean(0)

        def edit(layer, x, z_mean=z_mean):
            x = x.clone()
            for head in range(x.shape[2]):
                if f"L{layer}.H{head}" not in nodes:
                    x[0, :, head] = z_mean[layer, :, head]
            return x

        hooks = [m.register_forward_hook(lambda m, a, o, l=l, m_mean=m_mean: m_mean[l][None].to(o))
                 for l, m in enumerate(mlps) if f"M{l}" not in nodes]
        with torch.no_grad(), head_output_hook(subject, edit):
            final = subject.model(input_ids=torch.tensor([e.clean])).logits[0, -1]
        for h in hooks:
            h.remove()
        want.append(float(final[e.answer] - final[e.wrong]))
    assert circuit_metric(subject, task, nodes) == pytest.approx(sum(want) / len(want), abs=1e-5)  # float32 means
    everything = {f"L{l}.H{h}" for l in range(2) for h in range(4)} | {"M0", "M1"}
    assert faithfulness(subject, task, everything) == pytest.approx(1.0, abs=1e-12)
