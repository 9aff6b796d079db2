"""Tasks: batched metrics against one-prompt-at-a-time brute force; known answers on the zoo models; JSONL
validation naming the bad line."""

import functools
import json
import random

import numpy as np
import pytest
import torch
from tiny_models import build, tokenizer

import workbench
from workbench.probes import tasks as T
from workbench.zoo import tasks as templates


@functools.cache
def zoo_model(name):
    return workbench.load(name, device="cpu")


def tiny():
    return workbench.load(build("llama"), tokenizer=tokenizer())


def test_batched_metrics_equal_one_prompt_at_a_time(tmp_path):
    subject = tiny()
    lines = [{"clean": "The secret code is", "corrupted": "The wick code is", "answer": " 12", "wrong": " 34",
              "group": "code"},
             {"clean": "He wound the clockwork, trimmed the wick and wrote", "answer": " the", "wrong": " wind"}]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    task = T.from_jsonl(subject, path)
    assert [e.group for e in task.examples] == ["code", None]
    got = T.evaluate(subject, task)
    for i, e in enumerate(task.examples):
        with torch.no_grad():
            final = subject.model(input_ids=torch.tensor([e.clean])).logits[0, -1].double()
        assert got["logit_diff"][i] == pytest.approx(float(final[e.answer] - final[e.wrong]), abs=1e-4)
        assert got["loss"][i] == pytest.approx(float(-final.log_softmax(-1)[e.answer]), abs=1e-4)
        assert got["accuracy"][i] == float(final.argmax() == e.answer)
    assert task.metric == "logit_diff" and task.higher_is_better


def test_loss_task_is_the_mean_next_token_loss():
    subject = tiny()
    task = T.loss(subject, n=3, length=12)
    got = T.evaluate(subject, task)["loss"]
    assert len(got) == 3 and task.metric == "loss"
    for value, e in zip(got, task.examples, strict=True):
        ids = torch.tensor([e.clean])
        with torch.no_grad():
            logp = subject.model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
        want = -logp[torch.arange(len(e.clean) - 1), ids[0, 1:]].mean()
        assert value == pytest.approx(float(want), abs=1e-4)


def test_ioi_on_organism_is_solved_and_its_corruption_breaks_it():
    subject = zoo_model("organism")
    task = T.ioi(subject, n=16)
    task.check_pairs()
    clean, corrupted = T.evaluate(subject, task), T.evaluate(subject, task, "corrupted")
    assert clean["accuracy"].mean() >= 0.9 and clean["logit_diff"].mean() > 5
    assert corrupted["logit_diff"].mean() < 1
    c, k = clean["logit_diff"].mean(), corrupted["logit_diff"].mean()
    assert T.normalized(c, c, k) == 1 and T.normalized(k, c, k) == 0


def test_ioi_corruption_replaces_only_the_second_subject_in_every_template():
    rng = random.Random(3)
    prompts = [templates.ioi_prompt(rng) for _ in range(200)]
    assert {p.template for p in prompts} == set(range(len(templates.TEMPLATES)))
    for p in prompts:
        clean, corrupted = p.text.split(), p.corrupted.split()
        changed = [i for i, (a, b) in enumerate(zip(clean, corrupted, strict=True)) if a != b]
        assert len(changed) == 1 and clean[changed[0]] == p.s and clean.count(p.s) == 2, p.text
        assert changed[0] > max(i for i, w in enumerate(clean) if w.strip(",") == p.io)  # the second mention
    task = T.ioi(zoo_model("organism"), n=32)
    assert {e.group for e in task.examples} == {f"template {i}" for i in range(len(templates.TEMPLATES))}


def test_induction_on_induction_2l_copies_the_first_copy():
    subject = zoo_model("induction-2l")
    task = T.induction(subject, n=16, span=16)
    task.check_pairs()
    clean, corrupted = T.evaluate(subject, task), T.evaluate(subject, task, "corrupted")
    assert clean["accuracy"].mean() == 1.0 and clean["logit_diff"].mean() > 10
    assert corrupted["accuracy"].mean() <= 0.2 and abs(corrupted["logit_diff"].mean()) < 2  # nothing to copy


def test_needle_pairs_align_and_differ_only_in_the_value():
    subject = zoo_model("organism")
    task = T.needle(subject, n=2, length=96)
    task.check_pairs()
    for e in task.examples:
        differ = [i for i, (a, b) in enumerate(zip(e.clean, e.corrupted, strict=True)) if a != b]
        assert len(differ) == 1 and e.answer != e.wrong
    assert T.evaluate(subject, task)["accuracy"].mean() == 1.0


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a"]', "expected a JSON object"),
    ('{"clean": "a b"}', "'answer' must be a string"),
    ('{"clean": "a", "answer": " b", "colour": 1}', "unknown key(s) ['colour']"),
    ('{"clean": "a", "answer": " b", "wrong": 3}', "'wrong' must be a string or null"),
])
def test_bad_jsonl_lines_are_named(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"clean": "The code is", "answer": " 12"}\n' + line + "\n")
    with pytest.raises(T.TaskError, match="bad.jsonl:2: ") as err:
        T.from_jsonl(tiny(), path)
    assert message in str(err.value)


def test_unknown_task_and_unaligned_pairs_are_clear_errors(tmp_path):
    subject = tiny()
    with pytest.raises(T.TaskError, match="unknown task 'iio'"):
        T.load_task(subject, "iio")
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"clean": "The code is", "corrupted": "The secret code is", "answer": " 12"}))
    with pytest.raises(T.TaskError, match="example 0: the clean prompt has"):
        T.from_jsonl(subject, path).check_pairs()
    assert np.isfinite(T.evaluate(subject, T.from_jsonl(subject, path))["loss"]).all()
