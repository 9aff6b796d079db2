"""Retrieval heads: the cached, in-kernel copy-paste scoring against a brute-force recomputation with eager
attention weights at every step; needle prompts; interrupt and resume."""

import json

import numpy as np
import pytest
import torch
from tiny_models import build, tokenizer

import workbench
from workbench.probes.haystack import NeedleCase, needle_case
from workbench.probes.retrieval import copy_paste_hits, needle_recall, retrieval_heads


def brute_force_hits(model, case):
    seq, hits, steps = list(case.ids), 0, []
    start, stop = case.value_span
    for _ in case.answer:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([seq]), output_attentions=True)
        token = int(out.logits[0, -1].argmax())
        argmax = torch.stack([a[0, :, -1].argmax(-1) for a in out.attentions])  # [layer, head]
        inside = (argmax >= start) & (argmax < stop)
        hits = hits + (inside & (torch.tensor(seq)[argmax] == token)).numpy()
        steps.append(argmax.numpy())
        seq.append(token)
    return hits, seq[len(case.ids):], np.stack(steps)


def test_copy_paste_hits_match_brute_force():
    g = torch.Generator().manual_seed(10)  # ids and model seeds picked so that the random model copies
    ids = torch.randint(3, 97, (40,), generator=g).tolist()
    case = NeedleCase(ids=ids, value_span=(5, 35), answer=ids[5:13], depth=0.1, length=40)
    subject = workbench.load(build("llama"), tokenizer=tokenizer())
    hits, generated, steps = copy_paste_hits(subject, case)
    want_hits, want_generated, want_steps = brute_force_hits(build("llama", "eager"), case)
    assert generated == want_generated
    np.testing.assert_array_equal(steps, want_steps)
    np.testing.assert_array_equal(hits, want_hits)
    assert hits.sum() > 0  # the case exercises real hits, not only zeros


def test_needle_case_spans_the_value():
    tok = tokenizer()
    case = needle_case(tok, 200, 0.5, seed=1)
    start, stop = case.value_span
    assert case.ids[start:stop] == case.answer and abs(len(case.ids) - 200) <= 2
    assert case.ids[0] == tok.bos_token_id
    with pytest.raises(workbench.WorkbenchError, match="depth 1.5"):
        needle_case(tok, 200, 1.5, seed=1)
    with pytest.raises(workbench.WorkbenchError, match="too short"):
        needle_case(tok, 20, 0.5, seed=1)


def test_interrupted_scan_keeps_finished_cases_and_resumes(tmp_path):
    subject = workbench.load(build("llama"), tokenizer=tokenizer())
    calls = []

    def flaky(tok, length, depth, seed):
        calls.append((length, depth))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return needle_case(tok, length, depth, seed)

    grid = dict(lengths=(56, 64), depths=(0.2, 0.8), seeds=(0,))
    checkpoint = tmp_path / "needles.jsonl"
    partial = retrieval_heads(subject, builder=flaky, checkpoint=checkpoint, **grid)
    assert partial.params["interrupted"] and partial.params["cases"] == 2
    assert len(checkpoint.read_text().splitlines()) == 2
    calls.clear()
    resumed = retrieval_heads(subject, checkpoint=checkpoint, builder=lambda *a: (calls.append(a), needle_case(*a))[1],
                              **grid)
    assert len(calls) == 2 and resumed.params["cases"] == 4 and not resumed.params["interrupted"]
    fresh = retrieval_heads(subject, **grid)
    np.testing.assert_allclose(resumed.arrays["retrieval_score"], fresh.arrays["retrieval_score"])
    rows = [json.loads(line) for line in checkpoint.read_text().splitlines()]
    assert len(rows) == 4


def test_needle_recall_counts_the_needle_tokens_generated():
    assert needle_recall([5, 6, 7], [5, 6, 7]) == 1.0
    assert needle_recall([7, 5, 9], [5, 6, 7]) == pytest.approx(2 / 3)
    assert needle_recall([5, 5, 5], [5, 6, 5]) == pytest.approx(2 / 3)  # with multiplicity
    assert needle_recall([], [5]) == 0.0


def test_the_score_averages_over_recalled_needles_and_keeps_the_unfiltered_one(tmp_path):
    subject = workbench.load(build("llama"), tokenizer=tokenizer())
    shape = (subject.adapter.n_layers, subject.adapter.n_heads)
    rng = np.random.default_rng(0)
    scores = rng.random((4, *shape))
    recalls = [1.0, 0.5, 2 / 3, 0.0]  # 0.5 is not above the threshold
    checkpoint = tmp_path / "needles.jsonl"
    with open(checkpoint, "w") as f:
        for depth, recall, score in zip((0.1, 0.3, 0.5, 0.7), recalls, scores, strict=True):
            row = {"key": f"{subject.name}/64/{depth}/0", "score": score.tolist(), "correct": recall == 1.0,
                   "recall": recall}
            f.write(json.dumps(row) + "\n")
    grid = dict(lengths=(64,), depths=(0.1, 0.3, 0.5, 0.7), seeds=(0,), checkpoint=checkpoint)
    result = retrieval_heads(subject, **grid)
    np.testing.assert_allclose(result.arrays["retrieval_score"], scores[[0, 2]].mean(0))
    np.testing.assert_allclose(result.head_matrix("retrieval_score_all"), scores.mean(0))
    np.testing.assert_array_equal(result.head_matrix("is_retrieval_head"), scores[[0, 2]].mean(0) > 0.1)
    assert result.params["recalled_cases"] == 2
    unfiltered = retrieval_heads(subject, **grid, min_recall=None)
    np.testing.assert_allclose(unfiltered.arrays["retrieval_score"], scores.mean(0))
    none = retrieval_heads(subject, **grid, min_recall=1.0)
    assert np.isnan(none.arrays["retrieval_score"]).all() and not none.head_matrix("is_retrieval_head").any()
