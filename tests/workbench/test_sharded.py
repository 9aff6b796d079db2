"""Models sharded by accelerate's device_map (layers offloaded to the CPU and to disk) trace, probe, edit and find
circuits exactly as the plain model does: the offload only moves weights, every op runs the same on the CPU."""

import functools

import pytest
import torch
from tiny_models import build
from typer.testing import CliRunner

import workbench
from workbench.cli import app
from workbench.interventions.heads import ablate
from workbench.probes import tasks as T
from workbench.probes.circuits.discover import find_circuit

TEXT = "The keeper wrote the weather in a logbook: wind from the west, a light swell."


def offloaded(n_layers: int, disk: set[int]) -> dict[str, str]:
    """A Llama device map: layers in `disk` on disk, everything else on the CPU."""
    layers = {f"model.layers.{i}": "disk" if i in disk else "cpu" for i in range(n_layers)}
    return {"model.embed_tokens": "cpu", **layers, "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


@functools.cache
def plain():
    return workbench.load("organism", device="cpu")


@pytest.fixture
def sharded(tmp_path):
    n_layers = plain().adapter.n_layers
    return workbench.load("organism", device_map=offloaded(n_layers, {1, 3, 4}), offload_folder=tmp_path / "off")


def test_offloaded_model_gives_the_same_trace(sharded):
    assert hasattr(sharded.model.model.layers[1], "_hf_hook")  # accelerate's offload hook is really there
    assert sharded.model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # its weights on disk
    want = workbench.trace(plain(), TEXT, logits="all")
    got = workbench.trace(sharded, TEXT, logits="all")
    assert got.stats.keys() == want.stats.keys()
    for name in want.stats:  # same ops on the same device in the same order: equal to float32 rounding
        torch.testing.assert_close(got.stats[name], want.stats[name], atol=1e-6, rtol=1e-6, equal_nan=True)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-5)


def test_offloaded_model_edits_and_scores_tasks_the_same(sharded):
    task = T.ioi(plain(), n=4)
    with ablate(plain(), [(2, 1)], mode="zero"):
        want = T.evaluate(plain(), task)
    with ablate(sharded, [(2, 1)], mode="zero"):
        got = T.evaluate(sharded, task)
    for name in want:
        torch.testing.assert_close(torch.as_tensor(got[name]), torch.as_tensor(want[name]), atol=1e-5, rtol=1e-5)


def test_offloaded_model_finds_the_same_circuit(sharded):
    task = T.ioi(plain(), n=4)
    want = find_circuit(plain(), task, "eap", top_k=10, measure=False)
    got = find_circuit(sharded, task, "eap", top_k=10, measure=False)
    assert set(got.heads) == set(want.heads)
    torch.testing.assert_close(torch.tensor(got.edges.score.to_numpy()), torch.tensor(want.edges.score.to_numpy()),
                               atol=1e-5, rtol=1e-4)


def test_a_built_model_is_dispatched_by_a_device_map(tmp_path):
    model = build("llama")
    ids = torch.arange(3, 15)[None]
    want = workbench.trace(workbench.load(build("llama"), device="cpu"), ids)
    got = workbench.trace(workbench.load(model, device_map=offloaded(2, {0}), offload_folder=tmp_path / "off"), ids)
    for name in want.stats:
        torch.testing.assert_close(got.stats[name], want.stats[name], atol=1e-6, rtol=1e-6, equal_nan=True)


def test_bad_device_maps_are_refused_before_loading(tmp_path):
    with pytest.raises(workbench.WorkbenchError, match="'everywhere'"):
        workbench.load("organism", device_map="everywhere")
    with pytest.raises(workbench.WorkbenchError, match="offload_folder"):
        workbench.load("organism", device_map=offloaded(6, {1}))
    with pytest.raises(workbench.WorkbenchError, match="not both"):
        workbench.load("organism", device="cpu", device_map="auto")
    with pytest.raises(workbench.WorkbenchError, match="with device_map"):
        workbench.load("organism", offload_folder=tmp_path)


def test_cli_trace_takes_a_device_map(tmp_path):
    out = tmp_path / "trace"
    result = CliRunner().invoke(app, ["trace", "-m", "organism", "--device-map", "auto", "--max-memory", "cpu=1GiB",
                                      "--text", TEXT, "--out", str(out), "--no-store"])
    assert result.exit_code == 0, result.output
    want = workbench.trace(plain(), TEXT)
    torch.testing.assert_close(workbench.Trace.load(out).stats["entropy"], want.stats["entropy"], atol=1e-6,
                               rtol=1e-6, equal_nan=True)


def test_cli_scan_takes_a_device_map(tmp_path):
    result = CliRunner().invoke(app, ["scan", "heads", "-m", "induction-2l", "--device-map", "sequential",
                                      "--length", "8", "--batch", "2", "--out", str(tmp_path / "scan"), "--no-store"])
    assert result.exit_code == 0, result.output
    assert any((tmp_path / "scan").iterdir())
