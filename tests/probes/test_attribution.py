"""Direct logit attribution: the terms sum to the model's logit (difference) on every norm layout; one head's and
one MLP's terms against a brute-force recomputation from eager attention weights; factual-recall prompts and the
subject attention against eager weights on organism; the CLI."""

import os

import numpy as np
import pytest
import torch
from tiny_models import build, token_ids
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import workbench
from workbench import zoo
from workbench.probes.attribution import direct_logit_attribution
from workbench.probes.factual import fact_task, factual_recall
from workbench.probes.tasks import Example, Task


def random_task(n=3, wrong=True):
    rows = token_ids(n, 9, seed=1).tolist()
    return Task("random", [Example(tuple(r[:7 + i % 2]), None, r[8], r[0] if wrong else None, "")
                           for i, r in enumerate(rows)])  # prompts of two lengths: right padding


# llama: RMS norm w; gemma: RMS norm 1 + w; gemma3_text: norms on the attention and MLP outputs too;
# gpt2: LayerNorm and Conv1D projections with biases; gpt_neox: parallel attention and MLP
@pytest.mark.parametrize("arch", ["llama", "gemma", "gemma3_text", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("wrong", [True, False])
def test_the_terms_sum_to_the_final_logit(arch, wrong):
    subject = workbench.load(build(arch))
    result = direct_logit_attribution(subject, random_task(wrong=wrong))
    a = result.arrays
    total = a["heads"].sum((1, 2)) + a["mlp"].sum(1) + a["attention_bias"].sum(1) + a["embedding"] + a["bias"]
    # float32 model: its own residual and logits carry ~1e-7 relative error per term
    np.testing.assert_allclose(total, a["logit"], atol=1e-5 * (1 + np.abs(a["logit"]).max()))
    assert np.abs(a["heads"]).max() > 1e-3 and np.abs(a["mlp"]).max() > 1e-3
    assert result.table.set_index("metric").value["reconstruction_error"] < 1e-4


def test_one_head_and_one_mlp_against_eager_weights():
    model = build("llama", "eager")
    task = random_task(n=1)
    ids = torch.tensor([task.examples[0].clean])
    answer, wrong = task.examples[0].answer, task.examples[0].wrong
    kept = {}
    model.model.norm.register_forward_pre_hook(lambda m, a: kept.update(final=a[0]))
    model.model.layers[1].mlp.register_forward_hook(lambda m, a, o: kept.update(mlp=o))
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, output_hidden_states=True)
        layer = model.model.layers[1].self_attn
        x = model.model.layers[1].input_layernorm(out.hidden_states[1])
        v = layer.v_proj(x).view(1, ids.shape[1], 2, 8).transpose(1, 2).repeat_interleave(2, 1)  # GQA: 2 per kv
        z = (out.attentions[1][0, 3, -1] @ v[0, 3]).double()  # head 3 at the last position
    final = kept["final"][0, -1].double()
    norm = model.model.norm
    lens = norm.weight.detach().double() / torch.sqrt(final.pow(2).mean() + norm.variance_epsilon)
    unembed = model.lm_head.weight.detach().double()
    u = unembed[answer] - unembed[wrong]
    head = layer.o_proj.weight.detach().double()[:, 3 * 8:4 * 8] @ z
    result = direct_logit_attribution(workbench.load(build("llama")), task)
    assert result.arrays["heads"][0, 1, 3] == pytest.approx(float(u @ (lens * head)), abs=1e-5)
    assert result.arrays["mlp"][0, 1] == pytest.approx(float(u @ (lens * kept["mlp"][0, -1].double())), abs=1e-5)


@pytest.fixture(scope="module")
def organism():
    return workbench.load("organism")


def test_fact_prompts_span_their_subjects(organism):
    task, spans = fact_task(organism, "birthplace", n=4)
    tok = organism.tokenizer
    assert [tok.decode(e.clean[a:b]) for e, (a, b) in zip(task.examples, spans, strict=True)][:2] == [
        "Albert Einstein", "Pablo Picasso"]  # the prompt starts with the subject
    assert tok.decode(task.examples[0].clean[1:]) == "Albert Einstein was born in"
    assert tok.decode([task.examples[0].answer]) == tok.decode(tok.encode(" Germany", add_special_tokens=False)[:1])
    with pytest.raises(workbench.WorkbenchError, match="unknown factual task 'rivers'"):
        fact_task(organism, "rivers")


def test_subject_attention_against_eager_weights(organism):
    result = factual_recall(organism, "capitals", n=3)
    eager = AutoModelForCausalLM.from_pretrained(zoo.model_dir("organism"), attn_implementation="eager",
                                                 dtype=next(organism.model.parameters()).dtype).eval()
    task, spans = fact_task(organism, "capitals", n=3)
    want = []
    for example, (a, b) in zip(task.examples, spans, strict=True):
        with torch.no_grad():
            attentions = eager(input_ids=torch.tensor([example.clean]), output_attentions=True).attentions
        want.append(torch.stack([w[0, :, -1, a:b].double().sum(-1) for w in attentions]).numpy())
    np.testing.assert_allclose(result.arrays["subject_attention"], np.stack(want), atol=1e-4)
    assert result.table.set_index("metric").value["reconstruction_error"] < 1e-3
    assert 0 <= result.params["accuracy"] <= 1


def test_attribute_cli_prints_the_heads_and_stores_them(tiny_folder, tmp_path):
    from workbench.cli import app

    out, db = tmp_path / "out", tmp_path / "runs.duckdb"
    result = CliRunner().invoke(app, ["attribute", "--model", str(tiny_folder), "--task", "induction", "-n", "4",
                                      "--out", str(out), "--store", str(db)])
    assert result.exit_code == 0, result.output
    assert "heads writing the answer" in result.output and (out / "logit_attribution.parquet").is_file()
    with workbench.Store(db) as store:
        stored = store.head_metrics(store.runs().run_id[0])
    assert set(stored.metric) >= {"dla", "mlp_dla", "logit", "reconstruction_error"}
    refused = CliRunner().invoke(app, ["attribute", "--model", str(tiny_folder), "--task", "loss", "--no-store"])
    assert refused.exit_code == 2 and "no answers" in refused.output


@pytest.mark.skipif(not (torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"),
                    reason="a CUDA run of a trained model")
def test_gpu_attribution_sums_to_the_logit_on_organism():
    subject = workbench.load("organism", device="cuda", dtype=torch.float32)  # bf16 would round the sum
    result = factual_recall(subject, "capitals", n=4, backend="triton")
    logit = np.abs(result.arrays["logit"]).max()
    assert result.table.set_index("metric").value["reconstruction_error"] < 1e-3 * (1 + logit)
    assert np.isfinite(result.arrays["subject_attention"]).all()
