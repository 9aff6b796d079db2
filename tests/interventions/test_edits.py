"""Each intervention against a brute-force version: edited weights, or attention weights read from an eager
run and edited by hand; restore on error; composition."""

import os

import pytest
import torch
from tiny_models import build, token_ids, tokenizer

import workbench
from workbench.head_outputs import record_head_outputs
from workbench.interventions import (
    ablate,
    attention_influence,
    calibrate,
    keep_only,
    reinforce,
    scale,
    scale_initial,
    search_scale,
    soft_pag,
)
from workbench.interventions.calibration import search_heads
from workbench.interventions.zerotuning import answer_ids, answer_logprob

DH, H, G = 8, 4, 2  # tiny llama: head_dim, query heads, query heads per kv head
IDS = token_ids(2, 12, seed=5)


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def edited_weights(edits):
    """A fresh tiny llama whose o_proj columns of each (layer, head) are multiplied by edits[(layer, head)]."""
    model = build("llama")
    with torch.no_grad():
        for (layer, head), factor in edits.items():
            model.model.layers[layer].self_attn.o_proj.weight[:, head * DH:(head + 1) * DH] *= factor
    return model


def eager_heads(ids, edit_rows=None):
    """Head outputs [layer, B, L, H, Dh] from an eager run's attention weights, optionally edited per layer.

    Each layer reads the plain run's hidden states, so an edit is reproduced exactly only in the layers up to
    and including the first edited one; the tests edit one layer.
    """
    model = build("llama", "eager")
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, output_hidden_states=True)
        result = []
        for l, layer in enumerate(model.model.layers):
            x = layer.input_layernorm(out.hidden_states[l])
            v = layer.self_attn.v_proj(x).view(*ids.shape, -1, DH).transpose(1, 2).repeat_interleave(G, 1)
            attn = out.attentions[l].double()
            if edit_rows is not None:
                attn = edit_rows(l, attn)
            result.append((attn @ v.double()).transpose(1, 2))
    return torch.stack(result).float(), v  # v of the last layer, for identity checks


def test_zero_ablation_equals_zeroed_weights():
    subject = workbench.load(build("llama"))
    with ablate(subject, [(0, 1), (1, 3)]):
        got = logits(subject.model)
    torch.testing.assert_close(got, logits(edited_weights({(0, 1): 0.0, (1, 3): 0.0})), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(subject.model), logits(build("llama")))  # restored


def test_scale_and_reinforce_equal_scaled_weights():
    subject = workbench.load(build("llama"))
    want = logits(edited_weights({(1, 2): 3.0}))
    with scale(subject, [(1, 2)], 3.0):
        torch.testing.assert_close(logits(subject.model), want, atol=1e-5, rtol=1e-5)
    with reinforce(subject, [(1, 2)], 3.0):
        torch.testing.assert_close(logits(subject.model), want, atol=1e-5, rtol=1e-5)


def test_edits_compose():
    subject = workbench.load(build("llama"))
    with ablate(subject, [(0, 1)]), reinforce(subject, [(1, 2)], 2.0), scale(subject, [(1, 2)], 1.5):
        got = logits(subject.model)
    torch.testing.assert_close(got, logits(edited_weights({(0, 1): 0.0, (1, 2): 3.0})), atol=1e-5, rtol=1e-5)


def test_mean_ablation_uses_the_reference_mean():
    subject = workbench.load(build("llama"))
    reference = token_ids(3, 10, seed=9)
    heads, _ = eager_heads(reference)
    mean = heads[0, :, :, 2].mean(dim=(0, 1))  # layer 0, head 2, over all reference tokens
    with ablate(subject, [(0, 2)], mode="mean", reference=reference):
        seen, _ = record_head_outputs(subject, IDS)
    torch.testing.assert_close(seen[0, :, :, 2], mean.expand(2, 12, DH), atol=1e-5, rtol=1e-5)
    unchanged, _ = record_head_outputs(subject, IDS)
    torch.testing.assert_close(seen[0, :, :, :2], unchanged[0, :, :, :2])


def test_resampling_an_input_with_itself_changes_nothing():
    subject = workbench.load(build("llama"))
    ids = IDS[:1]
    with ablate(subject, [(0, 0), (1, 1)], mode="resample", reference=ids):
        got = logits(subject.model, ids)
    torch.testing.assert_close(got, logits(subject.model, ids), atol=1e-5, rtol=1e-5)
    with pytest.raises(workbench.WorkbenchError, match="longer than the reference"):
        with ablate(subject, [(0, 0)], mode="resample", reference=ids[:, :5]):
            logits(subject.model, ids)


def test_keep_only_ablates_the_rest():
    subject = workbench.load(build("llama"))
    with keep_only(subject, [(0, 0), (1, 2)]):
        got = logits(subject.model)
    rest = {(l, h): 0.0 for l in range(2) for h in range(4) if (l, h) not in [(0, 0), (1, 2)]}
    torch.testing.assert_close(got, logits(edited_weights(rest)), atol=1e-5, rtol=1e-5)


def test_every_edit_restores_the_model_on_error():
    subject = workbench.load(build("llama"))
    clean = logits(subject.model)
    for edit in (ablate(subject, [(0, 1)]), reinforce(subject, [(0, 1)], 2.0), soft_pag(subject, [(0, 1)], 0.5),
                 scale_initial(subject, {(0, 1): 2.0})):
        with pytest.raises(RuntimeError, match="boom"), edit:
            raise RuntimeError("boom")
    assert subject.model.config._attn_implementation == "sdpa"
    assert all(not proj._forward_pre_hooks for proj in subject.adapter.out_projections)
    torch.testing.assert_close(logits(subject.model), clean)


@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_soft_pag_interpolates_toward_the_identity(strength):
    subject = workbench.load(build("llama"))
    with soft_pag(subject, [(1, 3)], strength):
        seen, _ = record_head_outputs(subject, IDS)
    plain, v = eager_heads(IDS)
    want = (1 - strength) * plain[1, :, :, 3] + strength * v[:, 3].float()
    torch.testing.assert_close(seen[1, :, :, 3], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen[0], plain[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(workbench.WorkbenchError, match="strength 1.5"):
        with soft_pag(subject, [(1, 3)], 1.5):
            pass


def test_scale_initial_reweights_the_first_token():
    subject = workbench.load(build("llama"))
    with scale_initial(subject, {(1, 1): 3.0, (1, 0): 0.5}):
        seen, _ = record_head_outputs(subject, IDS)

    def reweight(layer, attn):
        attn = attn.clone()
        if layer == 1:
            attn[:, 1, :, 0] *= 3.0
            attn[:, 0, :, 0] *= 0.5
        return attn / attn.sum(-1, keepdim=True)

    want, _ = eager_heads(IDS, reweight)
    torch.testing.assert_close(seen, want, atol=1e-5, rtol=1e-5)


def test_calibrate_renormalize_scales_the_sinks_the_ratio_rule_finds():
    subject = workbench.load(build("llama"))
    with calibrate(subject, IDS, heads=[(0, h) for h in range(4)], beta=0.4, rule="ratio", ratio=1.2,
                   scaling="renormalize") as sinks:
        seen, _ = record_head_outputs(subject, IDS)
    assert sinks == {(0, 3): [8]}  # a random model has weak sinks: found at 1.2x the uniform share

    def reweight(layer, attn):
        attn = attn.clone()
        for (l, h), positions in sinks.items():
            if l == layer:
                attn[:, h, :, positions] *= 0.4
        return attn / attn.sum(-1, keepdim=True)

    want, _ = eager_heads(IDS, reweight)
    torch.testing.assert_close(seen[0], want[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(seen[0, :, :, 3], eager_heads(IDS)[0][0, :, :, 3], atol=1e-4)


def act_sinks(attn, alpha):
    """ACT's absolute rule from eager weights [B, H, L, L]: {head: positions} with row-mean attention > alpha."""
    mean = attn.mean(dim=2)  # [B, H, L]: each key's attention averaged over every query row
    mean[..., 0] = 0
    found = {}
    for _, head, position in torch.nonzero(mean > alpha).tolist():
        found.setdefault(head, set()).add(position)
    return {head: sorted(p) for head, p in sorted(found.items())}


def test_calibrate_scales_act_sinks_to_exactly_beta_and_gives_the_rest_to_every_other_key():
    subject, beta, alpha = workbench.load(build("llama")), 0.4, 0.1
    with torch.no_grad():
        attn = build("llama", "eager")(input_ids=IDS, output_attentions=True).attentions[0].double()
    want_sinks = act_sinks(attn, alpha)
    with calibrate(subject, IDS, heads=[(0, h) for h in range(4)], beta=beta, alpha=alpha) as sinks:
        seen, _ = record_head_outputs(subject, IDS)
    assert sinks == {(0, h): p for h, p in want_sinks.items()} and len(sinks) >= 2
    union = sorted({p for positions in sinks.values() for p in positions})  # a layer's heads share its sinks

    def exact(layer, attn):
        attn = attn.clone()
        if layer == 0:
            for h in want_sinks:
                moved = attn[:, h, :, union].sum(-1, keepdim=True)
                attn[:, h] *= (1 - beta * moved) / (1 - moved)
                attn[:, h, :, union] *= beta * (1 - moved) / (1 - beta * moved)  # exactly beta * p
        return attn

    want, _ = eager_heads(IDS, exact)
    torch.testing.assert_close(seen[0], want[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(seen[0], eager_heads(IDS)[0][0], atol=1e-4)


def test_act_head_search_keeps_the_heads_whose_calibration_helps():
    subject = workbench.load(build("llama"), tokenizer=tokenizer())
    examples = [("The secret code is", " 12 34"), ("wind from the west, a light", " swell")]
    result = search_heads(subject, examples, alpha=0.1)
    gains = result.metric("act_gain")
    assert len(gains) >= 2
    assert result.params["heads"] == [[r.layer, r.head] for r in gains.itertuples() if r.value > 0]
    base = sum(answer_logprob(subject, p, a)[0] for p, a in examples) / 2
    assert result.metric("base_logprob").value[0] == pytest.approx(base, abs=1e-5)
    head = (int(gains.layer[0]), int(gains["head"][0]))
    alone = []
    for prompt, answer in examples:
        with calibrate(subject, [sum(answer_ids(subject, prompt, answer), [])], [head], alpha=0.1):
            alone.append(answer_logprob(subject, prompt, answer)[0])
    assert result.metric("act_logprob").value[0] == pytest.approx(sum(alone) / 2, abs=1e-5)
    assert gains.value[0] == pytest.approx(sum(alone) / 2 - base, abs=1e-5)


def test_attention_influence_is_the_loss_difference():
    subject = workbench.load(build("llama"), tokenizer=tokenizer())
    docs = ["The keeper wound the clockwork.", "Two ships passing north in a light swell."]
    result = attention_influence(subject, docs, [(1, 0), (1, 1)])

    def loss(model, text):
        ids = subject.encode(text)["input_ids"]
        with torch.no_grad():
            out = model(input_ids=ids, labels=ids)
        return float(out.loss)

    masked = edited_weights({(1, 0): 0.0, (1, 1): 0.0})
    for i, doc in enumerate(docs):
        assert result.arrays["loss"][i] == pytest.approx(loss(build("llama"), doc), rel=1e-5)
        assert result.arrays["influence"][i] == pytest.approx(loss(masked, doc) - loss(build("llama"), doc),
                                                             abs=1e-5)


def test_search_scale_scores_each_candidate():
    subject = workbench.load(build("llama"), tokenizer=tokenizer())
    examples = [("The secret code is", " 12"), ("wind from the", " west")]
    best, table = search_scale(subject, examples, heads=[(0, 0), (1, 1)], candidates=(0.5, 1.0, 2.0))
    plain = [answer_logprob(subject, p, a) for p, a in examples]
    assert table.set_index("scale").loc[1.0, "logprob"] == pytest.approx(sum(lp for lp, _ in plain) / 2)
    assert best == table.loc[table.logprob.idxmax(), "scale"] and len(table) == 3
    ids = subject.encode("The secret code is")["input_ids"][0].tolist()
    ids += tokenizer().encode(" 12", add_special_tokens=False)
    with torch.no_grad():
        logp = torch.log_softmax(subject.model(input_ids=torch.tensor([ids])).logits[0, -2], -1)
    assert plain[0][0] == pytest.approx(float(logp[ids[-1]]), rel=1e-6)


@pytest.mark.skipif(not (torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"),
                    reason="ACT's exact scaling on the Triton kernel needs CUDA")
def test_gpu_act_exact_scaling_on_triton_equals_the_reference_backend():
    subject = workbench.load("organism", device="cuda", dtype=torch.float32)  # bf16 logits differ by more
    text = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n" * 4
    enc = subject.encode(text)
    logits = {}
    for backend in ("triton", "reference"):
        with torch.no_grad(), calibrate(subject, text) as sinks, workbench.capture(subject, stats=(), backend=backend):
            logits[backend] = subject.model(**enc).logits.float()
    assert sinks
    torch.testing.assert_close(logits["triton"], logits["reference"], atol=2e-2, rtol=2e-2)
