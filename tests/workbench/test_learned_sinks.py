"""Learned attention sinks (GPT-OSS) through the tracer, the intervention that scales them and the probes that read
sink mass; and attention features the kernels do not implement failing loudly, naming the feature.

The models are tiny random-init GPT-OSS configs whose sink logits run from -3 to 4 (tests/tiny_models.py). The
independent construction is the model's own eager attention with its `sinks` parameter changed by hand.
"""

import math

import pytest
import torch
from tiny_models import build, token_ids

import workbench
from workbench.errors import WorkbenchError
from workbench.interventions import scale_learned_sinks
from workbench.probes.sinks import sink_scores, uniform_received
from workbench.tracer import workbench_attention


def gpt_oss(attn="eager"):
    return build("gpt_oss", attn)


def test_learned_sink_mass_is_what_the_eager_weights_leave_out():
    model = gpt_oss()
    ids = token_ids(2, 16, seed=3)
    with torch.no_grad():
        weights = model(input_ids=ids, output_attentions=True).attentions
    subject = workbench.load(model)
    assert subject.adapter.learned_sinks and subject.adapter.facts()["learned_sinks"]
    trace = workbench.trace(subject, ids)  # the default statistics include learned_sink_mass here
    for layer, attn in enumerate(weights):
        want = 1 - attn.double().sum(-1)
        torch.testing.assert_close(trace.stats["learned_sink_mass"][layer].double(), want, atol=1e-6, rtol=0)
    mass = trace.stats["learned_sink_mass"]
    assert mass.min() > 0 and mass.max() < 1 and mass[:, :, -1].mean() > mass[:, :, 0].mean()  # sinks -3 .. 4


def test_models_without_learned_sinks_report_none():
    subject = workbench.load(build("llama"))
    assert "learned_sink_mass" not in workbench.trace(subject, token_ids(1, 8)).stats
    trace = workbench.trace(subject, token_ids(1, 8), stats=("learned_sink_mass",))
    assert trace.stats["learned_sink_mass"].abs().max() == 0
    with pytest.raises(WorkbenchError, match="no learned attention sinks"):
        with scale_learned_sinks(subject, {(0, 0): 0.0}):
            pass


@pytest.mark.parametrize("scale", [0.0, 0.5, 3.0])
def test_scaling_the_sinks_equals_changing_the_models_sink_logits(scale):
    """Scaling the sink's weight by s is the model with sink logits u + log s (s = 0: no sink at all)."""
    ids = token_ids(2, 12, seed=6)
    model, edited = gpt_oss(), gpt_oss()
    heads = [(0, 1), (0, 3), (1, 2)]
    with torch.no_grad():
        for layer, head in heads:
            edited.model.layers[layer].self_attn.sinks[head] += math.log(scale) if scale else -math.inf
        want = edited(input_ids=ids).logits
        subject = workbench.load(model)
        with scale_learned_sinks(subject, dict.fromkeys(heads, scale)):
            got = model(input_ids=ids).logits
            trace = workbench.trace(subject, ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if scale == 0:
        for layer, head in heads:
            assert trace.stats["learned_sink_mass"][layer, :, head].abs().max() == 0
    with pytest.raises(WorkbenchError, match=">= 0"):
        with scale_learned_sinks(subject, {(0, 0): -1.0}):
            pass


def test_sink_scores_count_the_learned_sinks():
    subject = workbench.load(gpt_oss())
    trace = workbench.trace(subject, token_ids(2, 16, seed=7))
    result = sink_scores(trace, eps=0.3)
    first, learned = result.arrays["sink_score"], result.arrays["learned_sink_score"]
    rows = trace.attention_mask.clone()
    rows[:, 0] = False
    want = trace.stats["learned_sink_mass"].double()[..., 1:].mean(dim=(1, 3)).numpy()
    assert abs(learned - want).max() < 1e-6
    assert (result.arrays["sink_share"] == ((first + learned) > 0.3).mean(axis=1)).all()
    assert set(result.table.metric) >= {"sink_score", "learned_sink_score", "sink_share"}


def test_unknown_attention_arguments_fail_naming_them():
    """A packed batch (cu_seq_lens: block-diagonal attention) or sinks under another name would be ignored by the
    kernels: the call fails naming the argument instead of giving another attention's statistics."""
    module = gpt_oss().model.layers[0].self_attn
    q = torch.randn(1, 4, 5, 8)
    kv = torch.randn(1, 2, 5, 8)
    for name, value in [("cu_seq_lens_q", torch.tensor([0, 2, 5])), ("sinks", torch.zeros(4))]:
        with pytest.raises(WorkbenchError, match=name):
            workbench_attention(module, q, kv, kv, None, **{name: value})
    out, _ = workbench_attention(module, q, kv, kv, None, position_ids=torch.arange(5)[None], s_aux=torch.zeros(4))
    assert out.shape == (1, 5, 4, 8)


def test_unsupported_architectures_and_features_fail_naming_them():
    model = build("llama")
    model.config.alibi = True
    with pytest.raises(WorkbenchError, match="ALiBi"):
        workbench.load(model)
    model.config.alibi = False
    model.config.model_type = "bloom"
    with pytest.raises(WorkbenchError, match="unsupported architecture 'bloom'"):
        workbench.load(model)


def test_the_uniform_baseline_of_secondary_sinks_hands_out_only_the_keys_share():
    """uniform_received with learned sinks: key j of a full causal layer gets sum_{i >= j} (1 - sink_i) / (i + 1),
    and on the sliding layer (window 4) only from the queries i < j + 4 (brute force over the queries)."""
    trace = workbench.trace(workbench.load(gpt_oss()), token_ids(1, 10, seed=8))
    for layer, window in ((0, 4), (1, 10)):
        kept = 1 - trace.sequence("learned_sink_mass", 0)[layer].double()  # [head, n]
        got, _ = uniform_received(trace, layer, 0, kept)
        want = torch.zeros_like(got)
        for j in range(10):
            for i in range(j, min(10, j + window)):
                want[:, j] += kept[:, i] / min(i + 1, window)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
