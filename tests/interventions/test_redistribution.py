"""`workbench.interventions.redistribute` (VAR) against a brute-force redistribution of the attention weights
read from an eager run of a tiny llama (float64, the formula of `workbench.kernels.contract`; head outputs to
1e-5 as in test_edits);
composition, restore on error, and the statistic sink_mass on the zoo's `organism`."""

import pytest
import torch
from test_edits import IDS, eager_heads, logits
from tiny_models import build

import workbench
from workbench.head_outputs import record_head_outputs
from workbench.interventions import redistribute, scale_initial
from workbench.tracer import capture

SINKS, TARGETS = [0, 1], [4, 6]


def by_hand(edits):
    """An `eager_heads` row edit: in layer 1, each {head: fraction} redistributes sinks -> targets by the formula."""
    def edit(layer, attn):
        attn = attn.clone()
        if layer != 1:
            return attn
        for head, f in edits.items():
            rows = attn[:, head]
            moved, held = rows[..., SINKS].sum(-1, keepdim=True), rows[..., TARGETS].sum(-1, keepdim=True)
            moving = held > 0
            rows[..., SINKS] *= torch.where(moving, 1 - f, 1.0)
            rows[..., TARGETS] *= torch.where(moving, 1 + f * moved / held.clamp_min(1e-300), 1.0)
        return attn
    return edit


def test_redistribution_equals_the_brute_force_edit():
    subject = workbench.load(build("llama"))
    with redistribute(subject, [(1, 0), (1, 3)], TARGETS, 0.6, sink_keys=SINKS):
        seen, _ = record_head_outputs(subject, IDS)
    want, _ = eager_heads(IDS, by_hand({0: 0.6, 3: 0.6}))
    torch.testing.assert_close(seen, want, atol=1e-5, rtol=1e-5)
    plain, _ = eager_heads(IDS)
    assert (seen[1, :, :, 0] - plain[1, :, :, 0]).abs().max() > 1e-3  # the edit is not negligible here


def test_zero_fraction_is_the_identity():
    subject = workbench.load(build("llama"))
    with capture(subject, stats=()):
        plain = logits(subject.model)
    with redistribute(subject, [(0, 1), (1, 2)], TARGETS, 0.0, sink_keys=SINKS):
        torch.testing.assert_close(logits(subject.model), plain, rtol=0, atol=0)


def test_composes_with_zerotuning_and_with_itself():
    """ZeroTuning's key bias acts on the logits, the redistribution on the map after it, in either nesting."""
    subject = workbench.load(build("llama"))
    with scale_initial(subject, {(1, 0): 3.0}), redistribute(subject, [(1, 0)], TARGETS, 0.5, sink_keys=SINKS):
        seen, _ = record_head_outputs(subject, IDS)
    redistributed = by_hand({0: 0.5})

    def reweight_then_redistribute(layer, attn):
        attn = attn.clone()
        if layer == 1:
            attn[:, 0, :, 0] *= 3.0
            attn = attn / attn.sum(-1, keepdim=True)
        return redistributed(layer, attn)

    want, _ = eager_heads(IDS, reweight_then_redistribute)
    torch.testing.assert_close(seen, want, atol=1e-5, rtol=1e-5)
    with redistribute(subject, [(1, 0)], TARGETS, 0.5, sink_keys=SINKS), scale_initial(subject, {(1, 0): 3.0}):
        torch.testing.assert_close(record_head_outputs(subject, IDS)[0], seen, atol=1e-6, rtol=1e-6)
    # twice over the same keys: one redistribution of 1 - (1 - 0.5)(1 - 0.4) = 0.7
    with redistribute(subject, [(1, 0)], TARGETS, 0.5, SINKS), redistribute(subject, [(1, 0)], TARGETS, 0.4, SINKS):
        twice, _ = record_head_outputs(subject, IDS)
    torch.testing.assert_close(twice, eager_heads(IDS, by_hand({0: 0.7}))[0], atol=1e-5, rtol=1e-5)
    with redistribute(subject, [(1, 0)], TARGETS, 0.5), redistribute(subject, [(1, 0)], [5], 0.5):
        with pytest.raises(ValueError, match="cannot compose redistributions"):
            logits(subject.model)


def test_restores_the_model_on_error_and_names_bad_values():
    subject = workbench.load(build("llama"))
    clean = logits(subject.model)
    with pytest.raises(RuntimeError, match="boom"), redistribute(subject, [(0, 1)], TARGETS, 0.5):
        raise RuntimeError("boom")
    assert subject.model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(logits(subject.model), clean)
    with pytest.raises(workbench.WorkbenchError, match="fraction 1.5"), redistribute(subject, [(0, 1)], [3], 1.5):
        pass
    with pytest.raises(workbench.WorkbenchError, match=r"keys \[0\] are both source and target"):
        with redistribute(subject, [(0, 1)], [0, 3], 0.5):
            pass
    with pytest.raises(workbench.WorkbenchError, match="head"):
        with redistribute(subject, [(0, 9)], [3], 0.5):
            pass


def test_sink_mass_drops_by_the_fraction_in_edited_heads_only():
    """On organism, layer 5 heads 2 and 3 (first-token sinks, as is every head of that layer): rows that see a
    target keep 1 - f of their first-token mass, the rows before the targets and every other head of layers <= 5
    none."""
    subject = workbench.load("organism", device="cpu")
    text = "The keeper wound the clockwork and wrote the weather in a leather logbook."
    plain = workbench.trace(subject, text, stats=("sink_mass",)).stats["sink_mass"]
    with redistribute(subject, [(5, 2), (5, 3)], targets=[3, 4], fraction=0.3):
        edited = workbench.trace(subject, text, stats=("sink_mass",)).stats["sink_mass"]
    torch.testing.assert_close(edited[:5], plain[:5], rtol=0, atol=0)
    for head in range(subject.adapter.n_heads):
        ratio = edited[5, 0, head, 3:] / plain[5, 0, head, 3:]
        want = 0.7 if head in (2, 3) else 1.0
        torch.testing.assert_close(ratio, torch.full_like(ratio, want), rtol=1e-5, atol=0)
    torch.testing.assert_close(edited[5, 0, :, :3], plain[5, 0, :, :3], rtol=0, atol=0)
