"""On a GPU (WORKBENCH_GPU_TESTS=1): a model with half its layers offloaded to the CPU traces as the model on the
GPU does, and a context-parallel trace on 2 ranks sharing the GPU (gloo on CUDA tensors, the Triton kernels)
equals the one-process trace.

Tolerances: the offloaded model runs the same kernels on the same weights (float32 rounding); the context-parallel
kernels meet each query chunk with a different number of keys, so float32 sums are regrouped (1e-4 absolute,
1e-3 relative, the scale of TF32 products), and argmax_key may flip only between keys whose weights tie to that
tolerance (at most 0.1% of the rows)."""

import os

import pytest
import torch
from gloo_ranks import spawn

import workbench
from workbench.kernels import ALL_STATS, KEY_STATS, QUERY_STATS

pytestmark = pytest.mark.skipif(not (os.environ.get("WORKBENCH_GPU_TESTS") and torch.cuda.is_available()),
                                reason="GPU tests: WORKBENCH_GPU_TESTS=1 on a CUDA machine")
TEXT = "The keeper wrote the weather in a logbook: wind from the west, a light swell, two ships passing north. " * 8


def _gpu_map(n_layers: int) -> dict[str, int | str]:
    layers = {f"model.layers.{i}": 0 if i < n_layers // 2 else "cpu" for i in range(n_layers)}
    return {"model.embed_tokens": 0, **layers, "model.norm": 0, "model.rotary_emb": 0, "lm_head": 0}


def _check(got: workbench.Trace, want: workbench.Trace, atol: float, rtol: float) -> None:
    flips = (got.stats["argmax_key"] != want.stats["argmax_key"]).float().mean().item()
    assert flips <= 1e-3, f"argmax_key differs in {flips:.2%} of the rows"
    for name in set(want.stats) - {"argmax_key"}:
        torch.testing.assert_close(got.stats[name], want.stats[name], atol=atol, rtol=rtol, equal_nan=True,
                                   msg=lambda m, n=name: f"{n}: {m}")
    torch.testing.assert_close(got.logits, want.logits, atol=10 * atol, rtol=rtol)


def test_cpu_offloaded_layers_trace_as_on_the_gpu():
    plain = workbench.load("organism", device="cuda", dtype=torch.float32)
    sharded = workbench.load("organism", device_map=_gpu_map(plain.adapter.n_layers), dtype=torch.float32)
    assert sharded.device == torch.device("cuda", 0)
    assert sharded.model.model.layers[-1].self_attn.q_proj.weight.device.type in ("cpu", "meta")
    _check(workbench.trace(sharded, TEXT, stats=ALL_STATS), workbench.trace(plain, TEXT, stats=ALL_STATS),
           atol=1e-5, rtol=1e-5)


PARALLEL_STATS = QUERY_STATS + KEY_STATS  # every per-token statistic (the block ones: test_context_parallel.py)


def _parallel_trace() -> workbench.Trace:
    subject = workbench.load("organism", device="cuda:0", dtype=torch.float32)
    trace = workbench.trace(subject, TEXT, stats=PARALLEL_STATS, context_parallel=True)
    assert trace.options["backend"] == "triton"
    return trace


def test_context_parallel_on_two_ranks_sharing_the_gpu(tmp_path):
    ranks = spawn(_parallel_trace, 2, tmp_path)
    want = workbench.trace(workbench.load("organism", device="cuda:0", dtype=torch.float32), TEXT,
                           stats=PARALLEL_STATS)
    for got in ranks:
        _check(got, want, atol=1e-4, rtol=1e-3)
