"""The zoo: every model loads offline through workbench, Hugging Face, TransformerLens' bridge and nnsight;
the cards' claims hold at small scale on fresh held-out data; the recipes run at toy size, deterministically."""

import functools
import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import workbench
from workbench import zoo
from workbench.interventions import ablate
from workbench.probes.heads import head_types, repeated_random_tokens
from workbench.probes.retrieval import retrieval_heads
from workbench.probes.sinks import sink_scores
from workbench.zoo import organism, tasks


@pytest.fixture(scope="module", params=["induction-2l", "organism"])
def name(request):
    return request.param


def card(name):
    return json.loads((zoo.model_dir(name) / "metrics.json").read_text())


def test_zoo_lists_its_models():
    assert {"induction-2l", "organism"} <= set(zoo.names())
    assert all((zoo.model_dir(n) / "MODEL_CARD.md").is_file() for n in zoo.names())


def test_loads_through_every_front_door(name):
    folder = zoo.model_dir(name)
    subject = workbench.load(name, device="cpu")
    ids = subject.encode("t5 t9 t5 t9" if name == "induction-2l" else "def main():\n    return 1")["input_ids"]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert AutoTokenizer.from_pretrained(folder)("t1 t2")["input_ids"]
    with torch.no_grad():
        want = hf(input_ids=ids).logits
        torch.testing.assert_close(subject.model(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
        bridge = subject.bridge()
        torch.testing.assert_close(bridge(ids), want, atol=1e-3, rtol=1e-3)  # eager vs sdpa, fp16 weights in fp32
    lm = workbench.load(name, device="cpu").nnsight()
    with lm.trace(ids):
        logits = lm.lm_head.output.save()
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)


def test_induction_2l_has_the_named_heads():
    subject = workbench.load("induction-2l", device="cpu")
    m = card("induction-2l")
    scores = head_types(subject, length=30, batch=4, seed=99).arrays  # fresh random spans
    layer, head = m["induction_head"]
    assert scores["induction"][layer, head] > 0.5
    assert scores["induction"][0].max() < 0.5  # no head of layer 0 is an induction head
    layer, head = m["prev_token_head"]
    assert scores["prev_token"][layer, head] > 0.5


def test_ablating_the_circuit_destroys_copying():
    """Known by construction: the repeat is predictable only through the previous-token head feeding the
    induction heads (all four heads of layer 1 are induction heads, so they are ablated together)."""
    subject = workbench.load("induction-2l", device="cpu")
    ids = repeated_random_tokens(subject, 30, 4, seed=5)

    def copy_loss():
        with torch.no_grad():
            logits = subject.model(input_ids=ids).logits[:, 31:-1]
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 32:].reshape(-1)))

    m = card("induction-2l")
    prev = tuple(m["prev_token_head"])
    other = min(((0, h) for h in range(4) if (0, h) != prev), key=lambda lh: m["prev_token"][0][lh[1]])
    induction = [(1, h) for h in range(4) if m["induction"][1][h] > 0.5]
    base = copy_loss()
    results = {}
    for label, heads in (("prev", [prev]), ("induction", induction), ("other", [other])):
        with ablate(subject, heads):
            results[label] = copy_loss()
    assert base < 0.5 and len(induction) >= 1
    assert results["prev"] > base + 2.0 and results["induction"] > base + 2.0
    assert results["other"] < base + 0.5


def test_organism_ioi_and_needles_hold_on_fresh_prompts():
    subject = workbench.load("organism", device="cpu")
    ioi = organism.ioi_scores(subject, n=50, seed=2024)
    assert ioi["ioi_accuracy"] >= 0.9 and ioi["ioi_logit_diff"] > 2
    haystack = (zoo.model_dir("organism") / "heldout.txt").read_text()
    assert organism.needle_accuracy(subject, haystack, length=256, n=5) >= 0.8


def test_organism_retrieval_heads_are_found_again():
    subject = workbench.load("organism", device="cpu")
    haystack = (zoo.model_dir("organism") / "heldout.txt").read_text()
    result = retrieval_heads(subject, lengths=(256,), depths=(0.3, 0.7), seeds=(5,),
                             builder=functools.partial(organism.needle_case, haystack=haystack))
    layer, head, _ = card("organism")["retrieval_top_heads"][0]
    assert result.arrays["retrieval_score"][layer, head] >= 0.5


def test_organism_has_first_token_sinks_in_its_later_layers():
    """The card's sink claim, on held-out text the card did not use, chunk by chunk: in each chunk most heads of
    the later half of the layers are first-token sinks (mean mass on BOS > 0.3, Gu et al. 2024's eps), and the
    first half has fewer of them."""
    subject = workbench.load("organism", device="cpu")
    text = (zoo.model_dir("organism") / "heldout.txt").read_text()
    chunks = organism.heldout_chunks(subject.tokenizer, text[60_000:140_000], n=2, length=256)  # not the card's
    half = subject.adapter.n_layers // 2
    for chunk in chunks:
        share = sink_scores(workbench.trace(subject, [chunk], stats=("sink_mass",))).arrays["sink_share"]
        assert share[half:].mean() > 0.5, share
        assert share[:half].mean() < share[half:].mean(), share


def test_organism_induction_head_is_found_again():
    subject = workbench.load("organism", device="cpu")
    layer, head, _ = card("organism")["induction_top_heads"][0]
    scores = head_types(subject, length=40, batch=2, seed=77).arrays["induction"]  # fresh random spans
    assert scores[layer, head] > 0.5 and np.median(scores) < 0.1


def test_ioi_corruption_swaps_the_second_subject():
    p = tasks.ioi_prompt(random.Random(3))
    assert p.corrupted.count(p.s) == p.text.count(p.s) - 1 and p.corrupted != p.text


def test_toy_recipes_run_and_are_deterministic(tmp_path):
    runs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        subprocess.run([sys.executable, "-m", "workbench.zoo.train", "induction-2l", "--toy", "--out", str(out)],
                       check=True, capture_output=True)
        runs.append((out / "model.safetensors").read_bytes())
    assert runs[0] == runs[1]
    out = tmp_path / "organism"
    subprocess.run([sys.executable, "-m", "workbench.zoo.train", "organism", "--toy", "--out", str(out)],
                   check=True, capture_output=True)
    assert workbench.load(str(out), device="cpu").adapter.n_layers == 2
