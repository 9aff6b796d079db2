"""The block-sparse edit on a model (workbench.interventions.block_sparse): oracle top-k masks against sorted brute
force, the edit reaching every layer's kernel, and the sweep over budgets."""

import itertools
import math

import numpy as np
import pytest
import torch

import workbench
from workbench.errors import WorkbenchError
from workbench.interventions.block_sparse import block_sparse, oracle_masks, sparsity_sweep, top_k_blocks
from workbench.probes import tasks


@pytest.fixture(scope="module")
def subject():
    return workbench.load("organism")


def test_top_k_blocks_match_sorted_brute_force():
    g = torch.Generator().manual_seed(0)
    mass = torch.rand(2, 3, 4, 4, generator=g).tril()  # causal: query block a sees key blocks 0..a
    mass[1, :, 3] = 0  # a query block without real rows
    keep = top_k_blocks(mass, 0.5)
    assert keep.shape == (3, 2, 4, 4)
    for b, h, a in itertools.product(range(2), range(3), range(4)):
        row = mass[b, h, a].tolist()
        seen = [j for j in range(4) if row[j] > 0]
        want = set(sorted(seen, key=lambda j: -row[j])[:max(1, math.ceil(0.5 * len(seen)))]) if seen else set(range(4))
        assert {j for j in range(4) if keep[h, b, a, j]} == want
    assert top_k_blocks(mass, 1.0).transpose(0, 1)[mass > 0].all()
    with pytest.raises(WorkbenchError, match="kept fraction 0"):
        top_k_blocks(mass, 0)


def test_the_edit_reaches_every_layer_and_drops_the_blocks(subject):
    ids = tasks.loss(subject, n=2, length=150).examples
    prompts = [list(e.clean) for e in ids]
    masks, dense = oracle_masks(subject, prompts, 0.5, block_size=64)
    with block_sparse(subject, masks, block_size=64):
        traced = workbench.trace(subject, prompts, stats=("block_mass",), block_size=64)
    for layer, mask in masks.items():
        got = traced.stats["block_mass"][layer]
        assert (got.transpose(0, 1)[~mask] == 0).all()  # nothing lands on a dropped block
        rows = got.sum(-1)  # and each query block still sums to its number of queries
        torch.testing.assert_close(rows, dense[layer].sum(-1), atol=1e-3, rtol=0)
    assert not torch.allclose(traced.stats["block_mass"][1], torch.stack(list(dense.values()))[1])
    with pytest.raises(ValueError, match="block_keep has shape"):
        with block_sparse(subject, masks, block_size=64):
            workbench.trace(subject, [prompts[0][:100]], stats=())


def test_sweep_over_budgets(subject):
    task = tasks.loss(subject, n=2, length=192)
    result = sparsity_sweep(subject, task, fractions=(1.0, 0.34), block_size=64)
    loss = result.table.query("metric == 'loss'").set_index("kept_fraction").value
    base = result.params["baseline"]["loss"]
    assert loss[1.0] == pytest.approx(base, abs=1e-4)  # every block holding mass kept: the dense model
    assert loss[0.34] > base  # a third of the blocks: the model predicts worse
    share = result.table.query("metric == 'kept_share'").set_index("kept_fraction").value
    assert share[1.0] == pytest.approx(1.0) and share[0.34] < 0.8
    assert result.arrays["scores"].shape == (2, 2) and result.head_metrics().empty
    assert result.arrays["base"].mean() == pytest.approx(base)
    np.testing.assert_allclose(result.arrays["scores"][1].mean(), loss[0.34])
