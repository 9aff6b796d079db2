"""The workbench attention as a plugin: HF models loaded with attn_implementation="workbench", statistics and
in-kernel edits inside an nnsight trace and under a TransformerLens bridge, and the logits a Trace keeps."""

import pytest
import torch
from tiny_models import build, token_ids

import workbench
from workbench.interventions import soft_pag

STATS = ("entropy", "sink_mass", "max_prob", "received")


def assert_same_stats(got: dict, want: dict) -> None:
    """Equal to float32 rounding: a run with gradients on (nnsight's) takes the differentiable reference on the
    CPU, workbench.trace the CPU path; both compute the same statistics."""
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, equal_nan=True, msg=name)


def test_hf_models_load_with_the_workbench_attention():
    """After `import workbench`, attn_implementation="workbench" is a transformers attention like sdpa."""
    reference = build("llama", "sdpa")
    plugged = build("llama", "workbench")
    assert plugged.config._attn_implementation == "workbench"
    ids = token_ids(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(plugged(input_ids=ids).logits, reference(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-5)
    subject = workbench.load(plugged)
    with torch.no_grad(), workbench.capture(subject, stats=STATS) as cap:
        plugged(input_ids=ids)
    assert_same_stats(cap.statistics(subject.adapter.n_layers), workbench.trace(subject, ids, stats=STATS).stats)


def test_statistics_and_edits_inside_an_nnsight_trace(tiny_folder):
    subject = workbench.load(str(tiny_folder))
    ids = token_ids(1, 14, seed=3)
    want = workbench.trace(subject, ids, stats=STATS)
    lm = subject.nnsight()
    with workbench.capture(subject, stats=STATS) as cap, lm.trace(ids):
        logits = lm.lm_head.output.save()
    assert_same_stats(cap.statistics(subject.adapter.n_layers), want.stats)
    torch.testing.assert_close(logits[0, -1], want.logits[0], rtol=1e-5, atol=1e-5)  # one row vs all rows
    with soft_pag(subject, [(1, 0)], 0.5):  # an in-kernel edit, applied inside the nnsight run
        edited = workbench.trace(subject, ids, stats=STATS)
        with workbench.capture(subject, stats=STATS) as cap, lm.trace(ids):
            edited_logits = lm.lm_head.output.save()
    torch.testing.assert_close(edited_logits[0, -1], edited.logits[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(edited.logits, want.logits)
    assert_same_stats(cap.statistics(subject.adapter.n_layers), edited.stats)


def test_trace_keeps_the_last_logits_by_default_and_all_when_asked(tmp_path):
    subject = workbench.load(build("llama"))
    ids = [token_ids(1, 12)[0].tolist(), token_ids(1, 9, seed=5)[0].tolist()]  # right-padded by 3
    with torch.no_grad():
        full = subject.model(**subject.encode(ids)).logits
    last = workbench.trace(subject, ids, stats=("entropy",))
    torch.testing.assert_close(last.logits, torch.stack([full[0, 11], full[1, 8]]), atol=1e-6, rtol=1e-6)
    every = workbench.trace(subject, ids, stats=("entropy",), logits="all")
    real = every.attention_mask  # padding rows are the kernel's zeros, sdpa's something else
    torch.testing.assert_close(every.logits[real], full[real], atol=1e-6, rtol=1e-6)
    assert workbench.trace(subject, ids, stats=("entropy",), logits=None).logits is None
    back = workbench.Trace.load(every.save(tmp_path / "t"))
    assert torch.equal(back.logits, every.logits) and back.options["logits"] == "all"
    with pytest.raises(workbench.WorkbenchError, match="logits='first'"):
        workbench.trace(subject, ids, logits="first")


def test_statistics_and_edits_under_a_transformerlens_bridge(tiny_folder):
    """Under a capture the bridge's attention layers run the workbench kernels: statistics equal
    workbench.trace's, an in-kernel edit changes the bridge's logits exactly as it changes the model's, hooks
    outside the attention fire, and the bridge's own eager attention (with hook_pattern) is back afterwards."""
    subject = workbench.load(str(tiny_folder))
    ids = token_ids(1, 10, seed=2)
    want = workbench.trace(subject, ids, stats=STATS)
    bridge = subject.bridge()
    fired = []
    with torch.no_grad(), workbench.capture(subject, stats=STATS) as cap:
        logits = bridge.run_with_hooks(ids, fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: fired.append(1))])
    assert fired == [1]
    assert_same_stats(cap.statistics(subject.adapter.n_layers), want.stats)
    torch.testing.assert_close(logits[0, -1], want.logits[0], rtol=1e-5, atol=1e-5)
    with soft_pag(subject, [(0, 1)], 0.7):
        edited = workbench.trace(subject, ids, stats=STATS)
        with torch.no_grad(), workbench.capture(subject, stats=STATS) as cap:
            edited_logits = bridge(ids)
    assert_same_stats(cap.statistics(subject.adapter.n_layers), edited.stats)
    torch.testing.assert_close(edited_logits[0, -1], edited.logits[0], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        patterns = []
        bridge.run_with_hooks(ids, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: patterns.append(x))])
    assert patterns and patterns[0].shape == (1, 4, 10, 10)  # the eager bridge, maps and all, once the block ends
