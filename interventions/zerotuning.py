"""ZeroTuning (Han et al. 2025, "ZeroTuning: Unlocking the Initial Token's Power to Enhance Large Language
Models Without Training"): scale the attention heads pay to the initial token, and search the scale on a
small labelled set.

Scaling a key's attention by s and renormalizing is adding log(s) to its logit, which the kernel does
in-pass: p'_0 = s p_0 / (1 - p_0 + s p_0).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import pandas as pd
import torch

from workbench.errors import WorkbenchError
from workbench.interventions.select import Head, check_heads, key_bias_edits
from workbench.subject import Subject
from workbench.tracer import capture


@contextlib.contextmanager
def scale_initial(subject: Subject, scales: Mapping[Head, float]) -> Iterator[None]:
    """Scale each head's attention to the first real token by scales[(layer, head)] > 0, renormalized."""
    bad = {head: s for head, s in scales.items() if not s > 0}
    if bad:
        raise WorkbenchError(f"initial-token scales must be > 0, got {bad}")
    edits = key_bias_edits(subject, {head: {0: math.log(s)} for head, s in scales.items()})
    with capture(subject, stats=(), edits=edits):
        yield


def answer_ids(subject: Subject, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """The token ids of `prompt` (as `Subject.encode` makes them) and of `answer` after it."""
    prompt_ids = subject.encode(prompt)["input_ids"][0].tolist()
    answer_ids = subject.tokenizer.encode(answer, add_special_tokens=False)
    if not answer_ids:
        raise WorkbenchError(f"answer {answer!r} has no tokens")
    return prompt_ids, answer_ids


def sequence_logprob(subject: Subject, prompt_ids: list[int], answer_ids: list[int]) -> tuple[float, bool]:
    """Teacher-forced log-probability of `answer_ids` after `prompt_ids` under the active edits, and whether the
    answer's first token is the argmax."""
    ids = torch.tensor([prompt_ids + answer_ids], device=subject.device)
    with torch.no_grad():
        logits = subject.model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
    logp = torch.log_softmax(logits, -1)
    target = torch.tensor(answer_ids, device=logp.device)
    return float(logp.gather(-1, target[:, None]).sum()), bool(logits[0].argmax() == target[0])


def answer_logprob(subject: Subject, prompt: str, answer: str) -> tuple[float, bool]:
    """Teacher-forced log-probability of `answer` after `prompt`, and whether its first token is the argmax."""
    return sequence_logprob(subject, *answer_ids(subject, prompt, answer))


def search_scale(subject: Subject, examples: Sequence[tuple[str, str]], heads: Iterable[Head] | None = None,
                 candidates: Sequence[float] = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)) -> tuple[float, pd.DataFrame]:
    """The scale (one for all `heads`, default every head) that maximizes the mean answer log-probability
    on (prompt, answer) `examples`; and a table of each candidate's mean log-probability and accuracy."""
    adapter = subject.adapter
    heads = check_heads(subject, heads if heads is not None else
                        [(l, h) for l in range(adapter.n_layers) for h in range(adapter.n_heads)])
    rows = []
    for s in candidates:
        with scale_initial(subject, dict.fromkeys(heads, s)):
            scored = [answer_logprob(subject, prompt, answer) for prompt, answer in examples]
        rows.append({"scale": s, "logprob": sum(lp for lp, _ in scored) / len(scored),
                     "accuracy": sum(hit for _, hit in scored) / len(scored)})
    table = pd.DataFrame(rows)
    return float(table.loc[table.logprob.idxmax(), "scale"]), table
