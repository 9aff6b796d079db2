"""The sparsity probes (workbench.probes.sparsity) against sorted brute force on block-mass maps of random
causal attention, and on a real traced model."""

import itertools

import numpy as np
import pytest
import torch

import workbench
from workbench.errors import WorkbenchError
from workbench.probes import sparsity
from workbench.trace import Trace

LAYERS, HEADS, BLOCK = 3, 4, 64


def random_trace(lengths=(300, 200), seed=0, copies=None) -> Trace:
    """A Trace whose block_mass is that of random causal attention maps over sequences of `lengths` tokens (the
    shorter ones right-padded); copies: {head: other head} whose maps are made equal."""
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    blocks = -(-n // BLOCK)
    mass = torch.zeros(LAYERS, len(lengths), HEADS, blocks, blocks)
    for b, length in enumerate(lengths):
        logits = torch.randn(LAYERS, HEADS, length, length, generator=g) * 3
        logits = logits.masked_fill(~torch.ones(length, length, dtype=torch.bool).tril(), -torch.inf)
        for head, other in (copies or {}).items():
            logits[:, head] = logits[:, other]
        p = logits.softmax(-1)
        for qb, kb in itertools.product(range(-(-length // BLOCK)), repeat=2):
            mass[:, b, :, qb, kb] = p[..., qb * BLOCK:(qb + 1) * BLOCK, kb * BLOCK:(kb + 1) * BLOCK].sum((-1, -2))
    mask = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    return Trace(model_id="random", config={"n_layers": LAYERS, "n_heads": HEADS}, token_ids=torch.zeros(
        len(lengths), n, dtype=torch.long), attention_mask=mask, tokens=[["t"] * n for _ in lengths],
        stats={"block_mass": mass}, options={"block_size": BLOCK})


def normalized_rows(trace):
    """Per sequence, the list of (layer, head, query block, row / sum) of every real query block, in numpy."""
    out = []
    for b in range(trace.token_ids.shape[0]):
        m = trace.sequence("block_mass", b).double().numpy()
        out.append({(l, h, a): m[l, h, a] / m[l, h, a].sum() for l, h, a in np.ndindex(m.shape[:3])
                    if m[l, h, a].sum() > 0})
    return out


def fewest(row, gamma):
    total, count = 0.0, 0
    for value in sorted(row, reverse=True):
        total, count = total + value, count + 1
        if total >= gamma - 1e-9:
            break
    return count


def test_coverage_matches_sorted_brute_force():
    trace = random_trace()
    result = sparsity.coverage(trace, gamma=0.8, top_k=(1, 2))
    rows = normalized_rows(trace)
    for layer, head in itertools.product(range(LAYERS), range(HEADS)):
        mine = [row for seq in rows for (l, h, _), row in seq.items() if (l, h) == (layer, head)]
        want = {"blocks_for_gamma": np.mean([fewest(r, 0.8) for r in mine]),
                "kept_fraction": np.mean([fewest(r, 0.8) / (r > 0).sum() for r in mine]),
                "top1_mass": np.mean([sorted(r)[-1] for r in mine]),
                "top2_mass": np.mean([sum(sorted(r)[-2:]) for r in mine])}
        for metric, value in want.items():
            assert result.head_matrix(metric)[layer, head] == pytest.approx(value, abs=1e-9), metric
    per_layer = result.metric("top1_mass").query("head == -1").value.to_numpy()
    np.testing.assert_allclose(per_layer, result.head_matrix("top1_mass").mean(1))
    assert result.arrays["blocks_for_gamma_per_block"].shape == (LAYERS, HEADS, 5)


def test_coverage_of_a_whole_budget_is_every_block_seen():
    result = sparsity.coverage(random_trace(), gamma=1.0)
    np.testing.assert_allclose(result.head_matrix("kept_fraction"), 1.0)


def test_head_groups_match_brute_force():
    trace = random_trace(copies={1: 0})  # head 1 attends exactly like head 0, in every layer
    result = sparsity.head_groups(trace, n_groups=2, gamma=0.7)
    rows = normalized_rows(trace)
    similarity = result.arrays["similarity"]
    for layer, h1, h2 in itertools.product(range(LAYERS), range(HEADS), range(HEADS)):
        per_seq = [np.mean([1 - 0.5 * np.abs(seq[(layer, h1, a)] - seq[(layer, h2, a)]).sum()
                            for (l, h, a) in seq if (l, h) == (layer, h1)]) for seq in rows]
        assert similarity[layer, h1, h2] == pytest.approx(np.mean(per_seq), abs=1e-9)
    representative = result.arrays["representative"]
    assert (representative[:, 0] == representative[:, 1]).all()  # the twins share a group
    for layer, head in itertools.product(range(LAYERS), range(HEADS)):
        rep = representative[layer, head]
        missed, own_missed = [], []
        for seq in rows:
            for (l, h, a), row in seq.items():
                if (l, h) != (layer, head):
                    continue
                chooser = seq[(layer, rep, a)]
                chosen = np.argsort(-chooser, kind="stable")[:fewest(chooser, 0.7)]
                own_missed.append(1 - np.sort(row)[::-1][:fewest(row, 0.7)].sum())
                missed.append(1 - row[chosen].sum())
        assert result.head_matrix("proxy_missed_mass")[layer, head] == pytest.approx(np.mean(missed), abs=1e-9)
        assert result.head_matrix("own_missed_mass")[layer, head] == pytest.approx(np.mean(own_missed), abs=1e-9)
    own = result.head_matrix("own_missed_mass")
    assert np.allclose(result.head_matrix("proxy_missed_mass")[:, :2], own[:, :2])  # the twins choose alike
    assert (own <= 0.3 + 1e-9).all()


def test_layer_similarity_matches_brute_force():
    trace = random_trace(lengths=(200,), seed=4)
    result = sparsity.layer_similarity(trace)
    m = trace.sequence("block_mass").double()
    d = (m / m.sum(-1, keepdim=True)).numpy()  # every query block is real: one unpadded sequence
    for first, other in itertools.product(range(LAYERS), repeat=2):
        sim = np.array([[1 - 0.5 * np.abs(d[first, h] - d[other, g]).sum(-1).mean() for g in range(HEADS)]
                        for h in range(HEADS)])
        assert result.arrays["same_head"][first, other] == pytest.approx(np.diag(sim).mean(), abs=1e-9)
        assert result.arrays["best_match"][first, other] == pytest.approx(sim.max(0).mean(), abs=1e-9)
    assert np.allclose(np.diag(result.arrays["same_head"]), 1.0)
    rows = result.metric("same_head")
    assert len(rows) == LAYERS * (LAYERS - 1) and set(rows.other_layer) == set(range(LAYERS))
    nxt = result.metric("next_layer_similarity").value.to_numpy()
    np.testing.assert_allclose(nxt[:-1], np.diagonal(result.arrays["same_head"], 1))
    stored = result.head_metrics()  # what the store keeps: the per-layer rows, not the pairs
    assert list(stored.metric.unique()) == ["next_layer_similarity"] and len(stored) == LAYERS


def test_bad_options_and_missing_statistic_name_the_value():
    trace = random_trace(lengths=(100,))
    with pytest.raises(WorkbenchError, match="gamma 1.5"):
        sparsity.coverage(trace, gamma=1.5)
    with pytest.raises(WorkbenchError, match=r"top_k values \[0\]"):
        sparsity.coverage(trace, top_k=(0,))
    with pytest.raises(WorkbenchError, match="n_groups 9"):
        sparsity.head_groups(trace, n_groups=9)
    trace.stats = {}
    with pytest.raises(WorkbenchError, match="block_mass"):
        sparsity.coverage(trace)


def test_a_traced_model():
    """organism on 300 tokens of its held-out text: a real head's block map obeys the same bounds."""
    from workbench import zoo

    subject = workbench.load("organism")
    text = (zoo.model_dir("organism") / "heldout.txt").read_text()[:4000]
    ids = subject.tokenizer(text, return_tensors="pt")["input_ids"][:, :300]
    trace = workbench.trace(subject, ids, stats=("block_mass",), block_size=64)
    result = sparsity.coverage(trace, gamma=0.9)
    kept = result.head_matrix("kept_fraction")
    assert ((kept > 0) & (kept <= 1)).all()
    top1, top4 = result.head_matrix("top1_mass"), result.head_matrix("top4_mass")
    assert (top1 <= top4 + 1e-12).all() and (top4 <= 1 + 1e-9).all() and (top1 >= 1 / 5 - 1e-9).all()
