"""Retrieval heads by needle-in-a-haystack copy-paste (Wu et al. 2024, "Retrieval Head Mechanistically
Explains Long-Context Factuality").

The model greedily generates the needle's answer. At each generated token, a head scores a hit when its
argmax key (the key it attends to most, from the query that produced the token) lies inside the needle's
value and holds the very token being generated: the head is copying it. A head's score on a prompt is
hits over the needle's length; its retrieval score averages that over context lengths and depths. Heads
above 0.1 are retrieval heads. Only `argmax_key` is computed in-kernel: no attention map is built.

As the paper's code does, the score averages only over the needles the model recalled: those whose recall, the
share of the needle's tokens found among the generated ones, exceeds 0.5 (`min_recall`); a head copies nothing
from a needle the model did not retrieve, so counting those would only dilute its score. The score over every
needle is kept beside it (`retrieval_score_all`); `min_recall=None` makes it the headline score again.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench import parallel
from workbench.probes.haystack import NeedleCase, needle_case
from workbench.probes.result import Result, head_rows
from workbench.subject import Subject
from workbench.tracer import capture

RETRIEVAL_THRESHOLD = 0.1
MIN_RECALL = 0.5  # Wu et al. score a needle only when the answer's recall of it is above 0.5
Builder = Callable[[object, int, float, int], NeedleCase]


def copy_paste_hits(
    subject: Subject, case: NeedleCase, backend: str = "auto"
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Greedily generate len(case.answer) tokens; return per-head hit counts [layer, head], the tokens, and
    each step's argmax keys [step, layer, head]."""
    adapter = subject.adapter
    ids = torch.tensor([case.ids], device=subject.device)
    start, stop = case.value_span
    hits = np.zeros((adapter.n_layers, adapter.n_heads))
    generated: list[int] = []
    steps = []
    with torch.no_grad(), capture(subject, stats=("argmax_key",), backend=backend) as cap:
        out = subject.model(input_ids=ids, use_cache=True)
        for _ in case.answer:
            token = int(out.logits[0, -1].argmax())
            argmax = torch.stack([cap.records[layer]["argmax_key"][0, :, -1]
                                  for layer in range(adapter.n_layers)]).cpu()
            inside = (argmax >= start) & (argmax < stop)
            copies = torch.tensor(case.ids)[argmax.clamp(0, len(case.ids) - 1)] == token
            hits += (inside & copies).numpy()
            generated.append(token)
            steps.append(argmax.numpy())
            out = subject.model(input_ids=torch.tensor([[token]], device=subject.device),
                                past_key_values=out.past_key_values, use_cache=True)
    return hits, generated, np.stack(steps)


def retrieval_heads(
    subject: Subject,
    lengths: Sequence[int] = (256, 512, 1024),
    depths: Sequence[float] = (0.1, 0.5, 0.9),
    seeds: Sequence[int] = (0,),
    builder: Builder = needle_case,
    checkpoint: str | Path | None = None,
    backend: str = "auto",
    min_recall: float | None = MIN_RECALL,
) -> Result:
    """Retrieval scores of every head over a grid of context lengths x needle depths x seeds.

    builder(tokenizer, length, depth, seed) -> NeedleCase makes each prompt (default: stdlib-prose haystacks).
    checkpoint: a JSONL file that receives each finished case; cases already in it are not run again, so a
    long scan that was interrupted (Ctrl-C) resumes where it stopped. An interrupt returns the cases done.
    Under `accelerate launch` or `torchrun` the cases to run are split across the processes (each appends its
    finished cases to the same checkpoint), and every process returns the whole result.
    Metrics per head: `retrieval_score` (over the needles with recall > min_recall; NaN when there is none;
    every needle when min_recall is None), `retrieval_score_all` (over every needle) and `is_retrieval_head`
    (retrieval_score > 0.1). Arrays: both scores [layer, head] and per case `accuracy` (1 when the generated
    answer equals the needle's value) and `recall`.
    """
    grid = list(itertools.product(lengths, depths, seeds))
    done = _read_checkpoint(checkpoint)
    parallel.wait()  # every process has read the checkpoint before any appends to it
    todo = [case for case in grid if _key(subject, *case) not in done]
    finished: list[tuple[str, dict]] = []
    interrupted = False
    try:
        for length, depth, seed in tqdm(parallel.share(todo), desc="needles", unit="case"):
            case = builder(subject.tokenizer, length, depth, seed)
            hits, generated, _ = copy_paste_hits(subject, case, backend=backend)
            key = _key(subject, length, depth, seed)
            finished.append((key, {"score": (hits / len(case.answer)).tolist(), "correct": generated == case.answer,
                                   "recall": needle_recall(generated, case.answer)}))
            if checkpoint is not None:
                _append_line(checkpoint, json.dumps({"key": key, **finished[-1][1]}))
    except KeyboardInterrupt:
        interrupted = True
    done.update(parallel.gather(finished))
    interrupted = any(parallel.gather([interrupted]))
    keys = [k for k in (_key(subject, *case) for case in grid) if k in done]
    if not keys:
        return Result("retrieval", pd.DataFrame(columns=["layer", "head", "metric", "value"]), {},
                      {"interrupted": interrupted, "cases": 0})
    per_case = np.array([done[k]["score"] for k in keys])  # [case, layer, head]
    accuracy = np.array([float(done[k]["correct"]) for k in keys])
    recall = np.array([done[k].get("recall", done[k]["correct"]) for k in keys], dtype=float)
    every = per_case.mean(axis=0)
    recalled = np.ones(len(keys), bool) if min_recall is None else recall > min_recall
    scores = per_case[recalled].mean(axis=0) if recalled.any() else np.full_like(every, np.nan)
    table = pd.concat([head_rows(scores, "retrieval_score"), head_rows(every, "retrieval_score_all"),
                       head_rows((scores > RETRIEVAL_THRESHOLD).astype(float), "is_retrieval_head")],
                      ignore_index=True)
    params = {"lengths": list(lengths), "depths": list(depths), "seeds": list(seeds), "cases": len(keys),
              "needle_accuracy": float(accuracy.mean()), "min_recall": min_recall,
              "recalled_cases": int(recalled.sum()), "interrupted": interrupted}
    arrays = {"retrieval_score": scores, "retrieval_score_all": every, "accuracy": accuracy, "recall": recall}
    return Result("retrieval", table, arrays, params)


def needle_recall(generated: Sequence[int], answer: Sequence[int]) -> float:
    """The share of the needle's tokens that the generated tokens hold (counted with multiplicity), the unigram
    recall by which Wu et al. judge whether the model retrieved the needle."""
    return sum((Counter(generated) & Counter(answer)).values()) / len(answer)


def _key(subject: Subject, length: int, depth: float, seed: int) -> str:
    return f"{subject.name}/{length}/{depth}/{seed}"


def _append_line(path: str | Path, line: str) -> None:
    """Append one line in a single write to a file opened for appending, so that processes appending to the same
    checkpoint at once never interleave their lines."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _read_checkpoint(path: str | Path | None) -> dict[str, dict]:
    if path is None or not Path(path).exists():
        return {}
    done = {}
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by an interrupt: that case runs again
            continue
        done[row.pop("key")] = row
    return done
