"""Each statistic's records gathered on the host while the forward runs (`workbench.host_records`): the slab a
capture hands out holds every layer's record as the kernels wrote it, stays the caller's when the capture runs
again, and is given only where every layer went into it. On a GPU (WORKBENCH_GPU_TESTS=1) the same through
pinned memory and a copy stream, bit for bit against the records left on the device."""

import os

import pytest
import torch
from tiny_models import build, token_ids

import workbench
from workbench.host_records import HostSlabs
from workbench.tracer import to_host

STATS = ("entropy", "argmax_key", "received")
GPU = os.environ.get("WORKBENCH_GPU_TESTS") == "1" and torch.cuda.is_available()


def test_a_slab_is_given_whole_once_every_layer_went_into_it():
    slabs = HostSlabs(3)
    records = [torch.full((2, 4), float(layer)) for layer in range(3)]
    kept = [slabs.put("entropy", layer, record) for layer, record in enumerate(records[:2])]
    assert all(torch.equal(k, r) for k, r in zip(kept, records, strict=False))
    assert slabs.take("entropy", 3) is None  # layer 2 not yet filed
    slabs.put("entropy", 2, torch.zeros(2, 5))  # another shape: a new slab, which holds layer 2 alone
    assert slabs.take("entropy", 3) is None and slabs.take("entropy", 1) is None
    for layer, record in enumerate(records):
        slabs.put("entropy", layer, record)
    slab = slabs.take("entropy", 3)
    assert torch.equal(slab, torch.stack(records))
    assert slabs.take("entropy", 3) is None  # handed over: the next forward fills a new one


def _captured(device: str) -> tuple[workbench.Subject, torch.Tensor, torch.Tensor]:
    model = build("llama", "sdpa").to(device)
    return workbench.load(model), token_ids(2, 16).to(device), token_ids(2, 16, seed=7).to(device)


def _check_handed_out(device: str) -> None:
    """The statistics equal a trace's of the same input, and a second forward of the same capture leaves the
    first's statistics as they were."""
    subject, first, second = _captured(device)
    n_layers = subject.adapter.n_layers
    with torch.no_grad(), workbench.capture(subject, stats=STATS) as cap:
        subject.model(input_ids=first)
        got = cap.statistics(n_layers)
        kept = {name: t.clone() for name, t in got.items()}
        subject.model(input_ids=second)
        again = cap.statistics(n_layers)
    for ids, stats in ((first, got), (second, again)):
        want = workbench.trace(subject, ids, stats=STATS).stats
        for name in STATS:
            assert stats[name].device.type == "cpu" and torch.equal(stats[name], want[name]), name
    assert all(torch.equal(got[name], kept[name]) for name in STATS)


def test_statistics_stay_the_callers_when_the_capture_runs_again():
    _check_handed_out("cpu")


@pytest.mark.skipif(not GPU, reason="GPU tests: WORKBENCH_GPU_TESTS=1 on a CUDA machine")
def test_gpu_statistics_copied_while_the_forward_runs():
    _check_handed_out("cuda")
    subject, first, _ = _captured("cuda")
    n_layers = subject.adapter.n_layers
    with torch.no_grad(), workbench.capture(subject, stats=STATS) as cap:
        subject.model(input_ids=first)
    got = cap.statistics(n_layers)
    assert all(record.device.type == "cuda" for layer in cap.records.values() for record in layer.values())
    for name in STATS:  # against the records left on the device, stacked and copied after the forward
        assert got[name].is_pinned(), name
        assert torch.equal(got[name], to_host([cap.records[i][name] for i in range(n_layers)])), name
