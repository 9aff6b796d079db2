"""query_window: one query's attention over the keys that end at it, against the full attention map."""

import pytest
import torch
from tiny_models import build, token_ids

import workbench
from workbench.probes.windows import layer_inputs, query_window


def test_query_window_is_the_row_of_the_full_map():
    subject = workbench.load(build("qwen2"))  # GQA and a sliding window in layer 1
    ids = token_ids(1, 30, seed=4)[0].tolist()
    full = workbench.trace(subject, ids, stats=(), patterns=[(1, 3)])
    for query, width in ((29, 8), (5, 64), (0, 1)):
        window = query_window(subject, ids, 1, 3, query, width)
        start = max(0, query - width + 1)
        assert window.position.tolist() == list(range(start, query + 1))
        torch.testing.assert_close(torch.tensor(window.p.to_numpy()), full.patterns[(1, 3)][0, query, start:query + 1])


def test_query_window_names_bad_positions_and_heads():
    subject = workbench.load(build("llama"))
    ids = token_ids(1, 10)[0].tolist()
    with pytest.raises(workbench.WorkbenchError, match="query position 10 is outside"):
        query_window(subject, ids, 0, 0, 10)
    with pytest.raises(workbench.HeadNotFoundError):
        query_window(subject, ids, 5, 0, 3)
    with pytest.raises(workbench.WorkbenchError, match="width 0"):
        query_window(subject, ids, 0, 0, 3, width=0)


@pytest.mark.parametrize("arch", ["qwen2", "gpt_oss"])  # GQA and a sliding window in layer 1; learned sinks
def test_layer_inputs_give_any_window_of_the_map_without_running_later_layers(arch):
    subject = workbench.load(build(arch))
    ids = token_ids(1, 30, seed=5)[0].tolist()
    full = workbench.trace(subject, ids, stats=(), patterns=[(1, 3), (1, 0)])
    later = []
    hook = subject.adapter.attention_modules[-1].register_forward_hook(lambda *_: later.append(1))
    try:
        kept = layer_inputs(subject, ids, 1)
    finally:
        hook.remove()
    assert not later  # the forward stopped after layer 1's attention
    for head in (3, 0):
        for span in ((0, 30), (10, 22), (29, 30)):
            torch.testing.assert_close(kept.pattern([head], span)[0, 0],
                                       full.patterns[(1, head)][0, span[0]:span[1], span[0]:span[1]])
    window = query_window(subject, ids, 1, 3, 20, 8, kept=kept)
    torch.testing.assert_close(torch.tensor(window.p.to_numpy()), full.patterns[(1, 3)][0, 20, 13:21])
