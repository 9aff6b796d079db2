"""Probes on real models whose answer is known: MiniLM's [CLS] sink (Clark et al. 2019, "What Does BERT Look
At?", and the sink literature), found by the first-token sink score of `workbench.probes.sinks`."""

import numpy as np

import workbench
from workbench.probes.sinks import sink_scores

SENTENCES = ["The cat sat on the mat while the dog slept by the door.",
             "Quarterly tax filings are due in April, said the accountant."]


def test_minilm_heads_sink_into_cls():
    subject = workbench.load("minilm")
    trace = workbench.trace(subject, SENTENCES, stats=("sink_mass", "received"))
    assert trace.real_tokens(0)[0] == "[CLS]" and trace.real_tokens(0)[-1] == "[SEP]"
    result = sink_scores(trace, eps=0.3)
    score = result.arrays["sink_score"]  # [layer, head] mean attention on [CLS]
    uniform = 1 / trace.attention_mask.sum(-1).float().mean().item()
    assert result.metric("sink_share").query("layer == -1").value.item() >= 0.3
    assert np.all(score[1:5].mean(axis=1) > 5 * uniform)  # the middle layers sink hard into [CLS]
    received = trace.sequence("received", 0)  # bidirectional: each query gives 1 in all
    assert float(received[2:5, :, 0].mean()) > 5 * float(received[2:5, :, 1:-1].mean())
