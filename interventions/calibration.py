"""ACT (Yu et al. 2024, "Unveiling and Harnessing Hidden Attention Sinks: Enhancing Large Language Models without
Training through Attention Calibration"): find the non-initial tokens that act as attention sinks in chosen heads,
scale their attention down to beta times what it was, and give the removed mass to the other tokens.

As the paper does it (the defaults):
- sinks by the absolute rule: a key whose mean received attention, `received_j` over the n real query rows of
  the input (the row mean of the causal map), exceeds alpha = 0.1, the first token excluded;
- exact scaling: each row's attention on the sinks becomes exactly beta * p_j and the removed (1 - beta) S_i goes
  to every other key in proportion to what it already gets. That is the VAR redistribution
  (`workbench.interventions.redistribution`) with fraction 1 - beta, the sinks as sources and every other key of
  the input as targets, applied in-kernel;
- `search_heads`, ACT's per-head calibration search: calibrate one head at a time on a small labelled set and keep
  the heads whose calibration raises the answers' log-probability.

The redistribution's keys are per layer, so the heads calibrated in one layer share that layer's sinks (the union
of the sinks found in each of them). The earlier variants stay as options: `rule="ratio"` finds sinks as tokens
that receive over `ratio` times their uniform share (`workbench.probes.sinks.secondary_sinks`); `scaling=
"renormalize"` adds a logit bias of log(beta) to the sinks, p'_j = beta p_j / (1 - S_i + beta S_i), which leaves
them above beta * p_j.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.errors import WorkbenchError
from workbench.interventions.select import Head, check_heads, key_bias_edits
from workbench.interventions.zerotuning import answer_ids, sequence_logprob
from workbench.kernels import HeadEdits
from workbench.probes.result import LAYER_LEVEL, Result
from workbench.probes.sinks import secondary_sinks
from workbench.subject import Subject
from workbench.tracer import capture, trace

ACT_ALPHA = 0.1  # the paper's absolute threshold on a key's mean received attention
RULES = ("absolute", "ratio")
SCALINGS = ("exact", "renormalize")


def _check(beta: float, scaling: str) -> None:
    if not 0.0 < beta <= 1.0:
        raise WorkbenchError(f"ACT beta {beta} is outside (0, 1]")
    if scaling not in SCALINGS:
        raise WorkbenchError(f"unknown ACT scaling {scaling!r}; known: {list(SCALINGS)}")


def find_hidden_sinks(subject: Subject, inputs, heads: Iterable[Head] | None = None, rule: str = "absolute",
                      alpha: float = ACT_ALPHA, ratio: float = 5.0, min_queries: int = 4) -> dict[Head, list[int]]:
    """Per head (default all), the positions of its non-initial sink tokens in `inputs` (union over the batch).

    rule "absolute" (ACT): mean received attention over the input's real query rows > `alpha`, the first token
    excluded. rule "ratio": over `ratio` times the uniform share, judged where `min_queries` queries see the key.
    """
    if rule not in RULES:
        raise WorkbenchError(f"unknown sink rule {rule!r}; known: {list(RULES)}")
    chosen = None if heads is None else set(check_heads(subject, heads))
    found: dict[Head, set[int]] = {}
    if rule == "ratio":
        rows = secondary_sinks(trace(subject, inputs, stats=("received",)), ratio, min_queries).metric("received_ratio")
        hits = [(int(r.layer), int(r.head), int(r.position)) for r in rows.itertuples()]
    else:
        traced = trace(subject, inputs, stats=("received",))
        hits = []
        for b in range(traced.token_ids.shape[0]):
            received = traced.sequence("received", b).double()  # [layer, head, n]
            mean = received / received.shape[-1]
            mean[..., 0] = 0.0  # the first token is the initial sink, not a hidden one
            hits += [tuple(hit) for hit in torch.nonzero(mean > alpha).tolist()]
    for layer, head, position in hits:
        if chosen is None or (layer, head) in chosen:
            found.setdefault((layer, head), set()).add(position)
    return {head: sorted(positions) for head, positions in sorted(found.items())}


def calibration_edits(subject: Subject, sinks: dict[Head, list[int]], beta: float, length: int,
                      scaling: str = "exact") -> dict[int, HeadEdits]:
    """The per-layer HeadEdits that scale each head's attention on its sinks by `beta`.

    scaling "exact": the redistribution of fraction 1 - beta from the layer's sinks to every other key of the
    first `length` positions; "renormalize": a logit bias of log(beta) on each head's own sinks.
    """
    _check(beta, scaling)
    if scaling == "renormalize":
        return key_bias_edits(subject, {head: dict.fromkeys(positions, math.log(beta))
                                        for head, positions in sinks.items()})
    by_layer: dict[int, tuple[torch.Tensor, set[int]]] = {}
    for (layer, head), positions in sinks.items():
        subject.adapter.check_head(layer, head)
        fractions, sources = by_layer.setdefault(layer, (torch.zeros(subject.adapter.n_heads), set()))
        fractions[head] = 1.0 - beta
        sources.update(positions)
    return {layer: HeadEdits(redistribute=fractions, source_keys=torch.tensor(sorted(sources)),
                             target_keys=torch.tensor([k for k in range(length) if k not in sources]))
            for layer, (fractions, sources) in by_layer.items() if sources}


@contextlib.contextmanager
def calibrate(subject: Subject, inputs, heads: Iterable[Head] | None = None, beta: float = 0.4,
              rule: str = "absolute", alpha: float = ACT_ALPHA, ratio: float = 5.0,
              scaling: str = "exact") -> Iterator[dict[Head, list[int]]]:
    """While the block runs, scale the attention of `heads` (default all) to their hidden sinks in `inputs`
    by `beta` in (0, 1]; yields the sinks found, {(layer, head): [positions]}.

    Sinks are found on `inputs` (`find_hidden_sinks` with `rule`, `alpha`, `ratio`); with scaling "exact" the
    targets are the positions of the longest input, so the edit is meant for runs on those inputs. They are listed
    one by one, and the Triton kernel unrolls its loop over that list: on a GPU, inputs of many hundred tokens
    compile slowly (scaling "renormalize" has no such list).
    """
    _check(beta, scaling)
    sinks = find_hidden_sinks(subject, inputs, heads, rule=rule, alpha=alpha, ratio=ratio)
    length = int(subject.encode(inputs)["attention_mask"].sum(-1).max())
    with capture(subject, stats=(), edits=calibration_edits(subject, sinks, beta, length, scaling)):
        yield sinks


def search_heads(subject: Subject, examples: Sequence[tuple], heads: Iterable[Head] | None = None,
                 beta: float = 0.4, rule: str = "absolute", alpha: float = ACT_ALPHA, scaling: str = "exact") -> Result:
    """ACT's per-head calibration search: calibrate each candidate head alone on every (prompt, answer) example
    (its sinks found on the prompt followed by the answer, the sequence that is scored) and keep the heads whose
    calibration raises the mean teacher-forced answer log-probability.

    examples: (prompt, answer) strings, or (prompt ids, answer ids) lists. Candidates: `heads`, default every head
    with a hidden sink on some example. Table, per candidate head: `act_logprob` (the mean answer log-probability
    with that head calibrated), `act_gain` (its gain over the uncalibrated model) and `is_act_head` (gain > 0);
    at layer = head = -1, `base_logprob`. params["heads"] lists the kept heads.
    """
    _check(beta, scaling)
    if not examples:
        raise WorkbenchError("the ACT head search needs at least one (prompt, answer) example")
    sequences = [answer_ids(subject, prompt, answer) if isinstance(prompt, str) else (list(prompt), list(answer))
                 for prompt, answer in examples]
    found = [find_hidden_sinks(subject, [ids + answer], heads, rule=rule, alpha=alpha) for ids, answer in sequences]
    candidates = sorted({head for sinks in found for head in sinks})
    base = _mean_logprob(subject, sequences, [{} for _ in sequences])
    rows = [(LAYER_LEVEL, LAYER_LEVEL, "base_logprob", base)]
    for head in tqdm(candidates, desc="ACT heads", unit="head"):
        edits = [calibration_edits(subject, {head: s[head]} if head in s else {}, beta, len(ids) + len(answer),
                                   scaling) for s, (ids, answer) in zip(found, sequences, strict=True)]
        logprob = _mean_logprob(subject, sequences, edits)
        rows += [(*head, "act_logprob", logprob), (*head, "act_gain", logprob - base),
                 (*head, "is_act_head", float(logprob > base))]
    table = pd.DataFrame(rows, columns=["layer", "head", "metric", "value"])
    kept = [[int(layer), int(head)] for layer, head, metric, value in rows if metric == "is_act_head" and value]
    params = {"beta": beta, "rule": rule, "alpha": alpha, "scaling": scaling, "examples": len(sequences),
              "heads": kept}
    return Result("act_heads", table, {}, params)


def _mean_logprob(subject: Subject, sequences: list[tuple[list[int], list[int]]],
                  edits: list[dict[int, HeadEdits]]) -> float:
    """Mean over examples of the answer's teacher-forced log-probability, each example under its own edits."""
    total = 0.0
    for sequence, edit in zip(sequences, edits, strict=True):
        with capture(subject, stats=(), edits=edit):
            total += sequence_logprob(subject, *sequence)[0]
    return total / len(sequences)
