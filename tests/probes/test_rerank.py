"""ICR re-ranking: the cached, in-kernel `received` scores against a brute-force sum of eager attention weights
over the whole prompt; nDCG; the JSONL reader; a known answer on organism (its retrieval heads find the needle)."""

import json
import os
import random

import numpy as np
import pytest
import torch
from tiny_models import build, tokenizer

import workbench
from workbench.probes.rerank import CONTENT_FREE, RerankCase, build_prompt, icr_scores, ndcg, read_cases, rerank
from workbench.probes.tasks import heldout_text

DOCS = ("The lighthouse keeper climbed the spiral stairs.", "wind from the west, a light swell",
        "two ships passing north", "The secret code is 12 34 56.")


def brute_force(model, subject, query):
    """[layer, head, document] from eager weights of the full prompt, minus the same for the content-free query."""
    def scores(text):
        prompt = build_prompt(subject, DOCS, text)
        ids = torch.tensor([prompt.prefix + prompt.query])
        with torch.no_grad():
            attentions = model(input_ids=ids, output_attentions=True).attentions
        rows = slice(len(prompt.prefix), ids.shape[1])
        return np.stack([torch.stack([a[0, :, rows, s:e].double().sum((-1, -2)) for s, e in prompt.spans], -1).numpy()
                         for a in attentions])
    return scores(query) - scores(CONTENT_FREE)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: sliding-window layers, whose cache drops old keys
def test_icr_scores_equal_a_brute_force_sum_of_eager_attention(arch):
    subject = workbench.load(build(arch), tokenizer=tokenizer())
    seen = icr_scores(subject, "What is the secret code?", DOCS)
    want = brute_force(build(arch, "eager"), subject, "What is the secret code?")
    assert seen.shape == (2, 4, len(DOCS))
    np.testing.assert_allclose(seen, want, atol=1e-5)  # float32 sums of a few dozen weights each
    assert np.abs(seen).max() > 1e-3


def test_ndcg_against_hand_computed_values():
    assert ndcg([3.0, 2.0, 1.0], [1, 0, 0]) == 1.0
    assert ndcg([1.0, 2.0, 3.0], [1, 0, 0]) == pytest.approx(0.5)  # relevant one at rank 3: 1 / log2(4)
    assert ndcg([2.0, 1.0, 3.0], [2, 1, 0]) == pytest.approx((3 / np.log2(3) + 1 / np.log2(4)) / (3 + 1 / np.log2(3)))
    assert np.isnan(ndcg([1.0, 2.0], [0, 0]))


def test_read_cases_names_the_bad_line(tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps({"query": "q", "documents": ["a", "b"], "relevance": [1, 0]}) + "\n\n"
                    + json.dumps({"query": "q", "documents": ["a"]}) + "\n")
    assert read_cases(path) == [RerankCase("q", ("a", "b"), (1, 0)), RerankCase("q", ("a",), None)]
    path.write_text(json.dumps({"query": "q", "documents": ["a", "b"], "relevance": [1]}) + "\n")
    with pytest.raises(workbench.WorkbenchError, match=r"cases.jsonl:1: \"relevance\" must be a list of 2"):
        read_cases(path)


def needle_cases(subject, n, seed=0):
    """Five code snippets from organism's held-out text; one holds `# the <colour> code is d d d d`, asked for."""
    text, rng, cases = heldout_text(subject), random.Random(seed), []
    for colour in ("red", "blue", "green", "white")[:n]:
        docs = [text[s:s + 120] for s in (rng.randrange(len(text) - 200) for _ in range(5))]
        target = rng.randrange(len(docs))
        value = " ".join(str(rng.randrange(10)) for _ in range(4))
        docs[target] = docs[target][:60] + f"\n# the {colour} code is {value}\n" + docs[target][60:]
        cases.append(RerankCase(f"# what is the {colour} code? the {colour} code is", tuple(docs),
                                tuple(float(i == target) for i in range(5))))
    return cases


def test_organism_retrieval_heads_rank_the_needle_document_first():
    subject = workbench.load("organism")
    result = rerank(subject, needle_cases(subject, 3))
    ndcg_of = result.head_matrix("ndcg")
    assert ndcg_of[3, 3] == 1.0 and ndcg_of[3, 0] == 1.0  # the card's retrieval heads L3.H3 and L3.H0
    assert result.head_matrix("top1_accuracy")[3, 3] == 1.0
    assert np.nanmedian(ndcg_of) < 0.8  # most heads do not rank
    ranks = result.metric("rank")
    assert sorted(ranks[ranks.case == 0].value) == [1, 2, 3, 4, 5]
    assert set(result.head_metrics().metric) == {"ndcg", "top1_accuracy", "accuracy"}


def test_rerank_cli_prints_the_ranking_and_stores_the_heads(tiny_folder, tmp_path):
    from typer.testing import CliRunner

    from workbench.cli import app

    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps({"query": "What is the secret code?", "documents": list(DOCS),
                                 "relevance": [0, 0, 0, 1]}) + "\n")
    out, db = tmp_path / "out", tmp_path / "runs.duckdb"
    args = ["rerank", "--model", str(tiny_folder), "--file", str(cases), "--out", str(out), "--store", str(db)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "nDCG" in result.output and (out / "rerank.parquet").is_file()
    want = rerank(workbench.load(str(tiny_folder)), read_cases(cases))
    with workbench.Store(db) as store:
        stored = store.head_metrics(store.runs().run_id[0])
    merged = stored.merge(want.head_metrics(), on=["layer", "head", "metric"], suffixes=("", "_want"))
    assert len(merged) == len(want.head_metrics()) == 2 * 2 * 4 + 2
    np.testing.assert_allclose(merged.value, merged.value_want, atol=1e-9)
    again = CliRunner().invoke(app, args)  # the folder holds files: refused, nothing replaced
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q"}\n')
    refused = CliRunner().invoke(app, ["rerank", "--file", str(bad), "--no-store"])
    assert refused.exit_code == 2 and "bad.jsonl:1" in refused.output


GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"


@pytest.mark.skipif(not GPU, reason="the Triton received pass against a KV cache needs CUDA")
def test_gpu_icr_scores_on_triton_equal_the_reference_backend():
    subject = workbench.load("organism", device="cuda", dtype=torch.float32)  # the kernels, not bf16's rounding
    case = needle_cases(subject, 1)[0]
    triton = icr_scores(subject, case.query, case.documents, backend="triton")
    reference = icr_scores(subject, case.query, case.documents, backend="reference")
    np.testing.assert_allclose(triton, reference, atol=1e-3 * np.abs(reference).max())
