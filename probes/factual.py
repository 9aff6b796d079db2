"""Factual recall (Lv et al. 2024, "Interpreting Key Mechanisms of Factual Recall in Transformer-Based Language
Models"): on prompts such as "The capital of France is", which heads move the subject to the last position and
which components write the answer there.

Two built-in tasks, `capitals` (country -> capital) and `birthplace` (person -> country of birth); the wrong answer
of each prompt is another prompt's answer, so the direction read is logit(answer) - logit(wrong). Per head,
`subject_attention` is the attention the last position pays to the subject's tokens (the last token runs as one
chunk against the cached prompt, with only `received` computed in-kernel), and `dla` its direct logit
attribution (`workbench.probes.attribution`); per layer, `mlp_dla` says which MLPs write the answer. A head that
both attends to the subject and writes the answer moves the subject's attribute to the last position.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from workbench.errors import WorkbenchError
from workbench.probes.attribution import direct_logit_attribution
from workbench.probes.rerank import Prompt, received_by_documents
from workbench.probes.result import LAYER_LEVEL, Result, head_rows
from workbench.probes.tasks import Example, Task, evaluate
from workbench.subject import Subject

CAPITALS = (("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Greece", "Athens"),
            ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Ireland", "Dublin"),
            ("Norway", "Oslo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Thailand", "Bangkok"))
BIRTHPLACES = (("Albert Einstein", "Germany"), ("Pablo Picasso", "Spain"), ("Wolfgang Amadeus Mozart", "Austria"),
               ("Leo Tolstoy", "Russia"), ("Mahatma Gandhi", "India"), ("Frederic Chopin", "Poland"),
               ("Dante Alighieri", "Italy"), ("Confucius", "China"), ("Akira Kurosawa", "Japan"),
               ("Nelson Mandela", "South Africa"), ("Jean Sibelius", "Finland"), ("Gabriel Garcia Marquez",
                                                                                  "Colombia"))
TEMPLATES = {"capitals": ("The capital of", " is", CAPITALS), "birthplace": ("", " was born in", BIRTHPLACES)}


def fact_task(subject: Subject, kind: str = "capitals", n: int | None = None) -> tuple[Task, list[tuple[int, int]]]:
    """The task `kind` (capitals or birthplace) with up to n prompts, and each prompt's subject span [start, stop).

    Prompts are assembled from separately tokenized pieces (BOS, the template's head, the subject, its tail), so
    the spans are exact; a prompt whose wrong answer shares the right one's first token is left out."""
    if kind not in TEMPLATES:
        raise WorkbenchError(f"unknown factual task {kind!r}; known: {list(TEMPLATES)}")
    if subject.tokenizer is None:
        raise WorkbenchError(f"model {subject.name!r} has no tokenizer: factual prompts are text")
    head, tail, facts = TEMPLATES[kind]

    def encode(text: str) -> list[int]:
        return subject.tokenizer.encode(text, add_special_tokens=False)

    bos = [] if subject.tokenizer.bos_token_id is None else [subject.tokenizer.bos_token_id]
    examples, spans = [], []
    for i, (name, answer) in enumerate(facts[:n]):
        before = bos + (encode(head) if head else [])
        named = encode((" " if head else "") + name)
        ids = before + named + encode(tail)
        right, wrong = encode(" " + answer)[0], encode(" " + facts[(i + 1) % len(facts)][1])[0]
        if right != wrong:
            examples.append(Example(tuple(ids), None, right, wrong, f"{head} {name}{tail}".strip()))
            spans.append((len(before), len(before) + len(named)))
    return Task(kind, examples), spans


def subject_attention(subject: Subject, task: Task, spans: list[tuple[int, int]], backend: str = "auto") -> np.ndarray:
    """[example, layer, head] attention from each prompt's last position to its subject's tokens."""
    return np.stack([received_by_documents(subject, Prompt(list(e.clean[:-1]), [span], [e.clean[-1]]),
                                           [[e.clean[-1]]], backend)[0, ..., 0]
                     for e, span in tqdm(list(zip(task.examples, spans, strict=True)), desc="subject attention",
                                         unit="prompt")])


def factual_recall(subject: Subject, kind: str = "capitals", n: int | None = None, backend: str = "auto") -> Result:
    """Direct logit attribution on a factual task, with each head's `subject_attention` beside its `dla`.

    Table: `direct_logit_attribution`'s rows plus per head `subject_attention` (mean over prompts) and, at
    layer = head = -1, `accuracy` (the answer's first token is the argmax, i.e. the model knows the fact).
    Arrays: those of the attribution plus `subject_attention` [example, layer, head]."""
    task, spans = fact_task(subject, kind, n)
    result = direct_logit_attribution(subject, task)
    attention = subject_attention(subject, task, spans, backend)
    accuracy = float(evaluate(subject, task)["accuracy"].mean())
    known = pd.DataFrame({"layer": [LAYER_LEVEL], "head": [LAYER_LEVEL], "metric": ["accuracy"], "value": [accuracy]})
    table = pd.concat([result.table, head_rows(attention.mean(0), "subject_attention"), known], ignore_index=True)
    return Result("factual_recall", table, {**result.arrays, "subject_attention": attention},
                  {**result.params, "accuracy": accuracy})
