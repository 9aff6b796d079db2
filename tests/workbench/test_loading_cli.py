"""Loading (local folders, built models, errors), interop with TransformerLens and nnsight, and the CLI."""

import pytest
import torch
from tiny_models import build, token_ids
from typer.testing import CliRunner

import workbench
from workbench.cli import app
from workbench.samples import SAMPLE_TEXT

runner = CliRunner()


def test_load_a_local_folder(tiny_folder):
    subject = workbench.load(str(tiny_folder))
    facts = subject.adapter.facts()
    assert facts | {"layer_types": None} == {
        "model_type": "llama", "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "context_length": 64,
        "is_causal": True, "sliding_window": None, "layer_types": None, "learned_sinks": False}
    trace = workbench.trace(subject, "The keeper wrote the weather in a logbook.")
    assert trace.tokens[0][:3] == subject.tokenizer.convert_ids_to_tokens(trace.token_ids[0, :3].tolist())
    assert trace.stats["entropy"].shape[:3] == (2, 1, 4)


def test_unknown_models_raise_clear_errors():
    with pytest.raises(workbench.UnknownModelError, match="no-such-org/no-such-model"):
        workbench.load("no-such-org/no-such-model")
    with pytest.raises(workbench.UnknownModelError, match="does not exist"):
        workbench.load("./no/such/folder")
    with pytest.raises(workbench.DeviceError, match="'cuda'"):
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        workbench.load(build("gpt2"), device="cuda")


def test_bridge_runs_the_same_model(tiny_folder):
    subject = workbench.load(str(tiny_folder))
    ids = token_ids(1, 12)
    with torch.no_grad():
        want = subject.model(input_ids=ids).logits
        bridge = subject.bridge()
        got = bridge(ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)  # eager vs sdpa reordering, float32


def test_nnsight_wraps_the_same_model(tiny_folder):
    subject = workbench.load(str(tiny_folder))
    ids = token_ids(1, 12)
    with torch.no_grad():
        want = subject.model(input_ids=ids).logits
    lm = subject.nnsight()
    with lm.trace(ids):
        logits = lm.lm_head.output.save()
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)


def test_cli_trace_end_to_end(tiny_folder, tmp_path):
    out, db = tmp_path / "trace", tmp_path / "runs.duckdb"
    text = "He wound the clockwork and trimmed the wick."
    result = runner.invoke(app, ["trace", "--model", str(tiny_folder), "--text", text, "--out", str(out),
                                 "--store", str(db)])
    assert result.exit_code == 0, result.output
    assert "sink mass" in result.output and "strongest first-token sinks" in result.output
    trace = workbench.Trace.load(out)
    assert trace.model_id == str(tiny_folder)
    with workbench.Store(db) as store:
        runs = store.runs()
        assert len(runs) == 1 and runs.trace_dir[0] == str(out.resolve())
        assert len(store.head_metrics(runs.run_id[0])) == len(trace.head_table())


def test_cli_info(tiny_folder):
    result = runner.invoke(app, ["info", "--model", str(tiny_folder)])
    assert result.exit_code == 0, result.output
    assert "n_kv_heads" in result.output and "full x2" in result.output


@pytest.mark.parametrize("args, message", [
    (["--model", "./missing-folder"], "does not exist"),
    (["--model", "FOLDER", "--text", "a", "--file", "b"], "not both"),
    (["--model", "FOLDER", "--file", "/no/such/file.txt"], "does not exist"),
    (["--model", "FOLDER", "--text", "a", "--stats", "entropy,nope"], "unknown statistic"),
])
def test_cli_reports_bad_input(args, message, tiny_folder):
    result = runner.invoke(app, ["trace", "--no-store", *(str(tiny_folder) if a == "FOLDER" else a for a in args)])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_cli_errors_print_paths_whole_and_literal(tiny_folder, tmp_path):
    missing = tmp_path / ("[b]" + "a-long-folder-name-" * 6) / "notes[1].txt"  # brackets rich would read as markup
    result = runner.invoke(app, ["trace", "--no-store", "--model", str(tiny_folder), "--file", str(missing)])
    assert result.exit_code == 2 and f"--file {str(missing)!r} does not exist" in result.output


def test_cli_refuses_text_longer_than_the_context(tiny_folder, tmp_path):
    result = runner.invoke(app, ["trace", "--model", str(tiny_folder), "--text", SAMPLE_TEXT * 4, "--no-store",
                                 "--out", str(tmp_path / "t")])
    assert result.exit_code == 2 and "longer than" in result.output
    assert not (tmp_path / "t").exists()
