"""ICR, in-context re-ranking (Chen et al. 2025, "Attention in Large Language Models Yields Efficient Zero-Shot
Re-Rankers"): put the documents and then the query in one prompt and rank each document by the attention the
query's tokens pay to its tokens, summed over every layer and head.

    score(d) = sum_l sum_h sum_{i in query} sum_{j in d} p^{lh}_ij  -  the same under a content-free query ("N/A")

The calibration removes each document's intrinsic pull (position, length, sink tokens) that any query would show.
The prompt's document part runs once and is kept in the KV cache; each query (the real one, then "N/A") runs as
one chunk against it with only `received` computed in-kernel, the column sums over the chunk's query rows: no
attention map is built. The per-head scores say which heads rank (BlockRank, Gupta et al. 2025, sees relevance in
middle layers' query-to-document attention); with relevance labels, each head's ranking gets its nDCG.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.errors import WorkbenchError
from workbench.probes.result import LAYER_LEVEL, Result, head_rows
from workbench.subject import Subject
from workbench.textfile import json_lines
from workbench.tracer import capture

CONTENT_FREE = "N/A"
INSTRUCTION = "Here are some documents, then a search query.\n\n"


@dataclass(frozen=True)
class RerankCase:
    """A query, its candidate documents and, optionally, one relevance grade per document (0 = not relevant)."""

    query: str
    documents: tuple[str, ...]
    relevance: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Prompt:
    """The token ids of the document part, each document's [start, stop) span in them, and the query's ids."""

    prefix: list[int]
    spans: list[tuple[int, int]]
    query: list[int]


def build_prompt(subject: Subject, documents: Sequence[str], query: str) -> Prompt:
    """The ICR prompt as separately tokenized pieces, so that the document spans are exact: BOS, an instruction,
    `[document k] text` per document, then `Query:`; the query's own tokens come after (the chunk that is scored)."""
    if subject.tokenizer is None:
        raise WorkbenchError(f"model {subject.name!r} has no tokenizer: re-ranking needs text")

    def encode(text: str) -> list[int]:
        return subject.tokenizer.encode(text, add_special_tokens=False)

    bos = subject.tokenizer.bos_token_id
    prefix = ([] if bos is None else [bos]) + encode(INSTRUCTION)
    spans = []
    for k, document in enumerate(documents, start=1):
        prefix += encode(f"[document {k}]")
        body = encode(" " + document.strip())
        if not body:
            raise WorkbenchError(f"document {k} has no tokens")
        spans.append((len(prefix), len(prefix) + len(body)))
        prefix += body + encode("\n\n")
    prefix += encode("Query:")
    query_ids = encode(" " + query.strip())
    if not query_ids:
        raise WorkbenchError(f"query {query!r} has no tokens")
    return Prompt(prefix, spans, query_ids)


def received_by_documents(subject: Subject, prompt: Prompt, queries: Sequence[Sequence[int]],
                          backend: str = "auto") -> np.ndarray:
    """[query, layer, head, document]: the attention each query chunk's tokens pay to each document's tokens.

    The document part runs once; each chunk runs against a copy of its KV cache (a sliding-window layer's cache
    drops old keys as it grows, so it cannot be cropped back)."""
    device = subject.device
    with torch.no_grad():
        cache = subject.model(input_ids=torch.tensor([prompt.prefix], device=device), use_cache=True).past_key_values
        out = []
        for ids in queries:
            with capture(subject, stats=("received",), backend=backend) as cap:
                subject.model(input_ids=torch.tensor([list(ids)], device=device),
                              past_key_values=copy.deepcopy(cache), use_cache=True)  # each chunk on a fresh copy
            total = len(prompt.prefix) + len(ids)
            out.append(np.stack([_span_sums(cap.records[layer]["received"][0].double().cpu(), prompt.spans, total)
                                 for layer in range(subject.adapter.n_layers)]))
    return np.stack(out)


def _span_sums(received: torch.Tensor, spans: list[tuple[int, int]], total: int) -> np.ndarray:
    """[head, document] sums of received [head, keys] over each span of absolute positions. A sliding-window
    layer's cache keeps only the last keys, so its key k sits at position total - keys + k."""
    offset = total - received.shape[-1]
    return torch.stack([received[..., max(a - offset, 0):max(b - offset, 0)].sum(-1) for a, b in spans], -1).numpy()


def icr_scores(subject: Subject, query: str, documents: Sequence[str], calibrate: bool = True,
               backend: str = "auto") -> np.ndarray:
    """Per-head ICR scores [layer, head, document]; sum over layer and head for a document's score.
    calibrate: subtract the scores under the content-free query "N/A" (the paper's calibration)."""
    prompt = build_prompt(subject, documents, query)
    content_free = subject.tokenizer.encode(" " + CONTENT_FREE, add_special_tokens=False)
    chunks = [prompt.query] + ([content_free] if calibrate else [])
    received = received_by_documents(subject, prompt, chunks, backend)
    return received[0] - received[1] if calibrate else received[0]


def ndcg(scores: np.ndarray, relevance: np.ndarray) -> float:
    """nDCG of the ranking by `scores` (descending, ties by document order) against graded `relevance`:
    sum (2^rel - 1) / log2(rank + 1) over the ranking, over the same sum for the ideal order (NaN with no
    relevant document)."""
    gains = 2.0 ** np.asarray(relevance, float) - 1.0
    discounts = 1.0 / np.log2(np.arange(2, len(gains) + 2))
    ideal = np.sort(gains)[::-1] @ discounts
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    return float(gains[order] @ discounts / ideal) if ideal > 0 else float("nan")


def rerank(subject: Subject, cases: Sequence[RerankCase], calibrate: bool = True, backend: str = "auto") -> Result:
    """ICR over `cases`. Table: per case and document (columns `case`, `document`), metrics `icr_score` and
    `rank` (1 = first); with relevance labels, per head `ndcg` and `top1_accuracy` of the head's own ranking
    (mean over the labelled cases) and, at layer = head = -1, `ndcg` and `accuracy` (the first-ranked document
    is relevant) of the summed score. Arrays: `head_scores_<case>` [layer, head, document]."""
    if not cases:
        raise WorkbenchError("nothing to re-rank: no cases")
    rows, arrays, per_head, overall = [], {}, [], []
    for c, case in enumerate(tqdm(cases, desc="re-ranking", unit="query")):
        heads = icr_scores(subject, case.query, case.documents, calibrate, backend)
        arrays[f"head_scores_{c}"] = heads
        total = heads.sum(axis=(0, 1))
        ranks = np.empty(len(total), int)
        ranks[np.argsort(-total, kind="stable")] = np.arange(1, len(total) + 1)
        for d in range(len(total)):
            rows += [(LAYER_LEVEL, LAYER_LEVEL, c, d, "icr_score", float(total[d])),
                     (LAYER_LEVEL, LAYER_LEVEL, c, d, "rank", float(ranks[d]))]
        if case.relevance is not None:
            relevance = np.asarray(case.relevance, float)
            overall.append((ndcg(total, relevance), float(relevance[ranks.argmin()] > 0)))
            flat = heads.reshape(-1, heads.shape[-1])
            per_head.append([(ndcg(s, relevance), float(relevance[int(np.argmax(s))] > 0)) for s in flat])
    columns = ["layer", "head", "case", "document", "metric", "value"]
    table = pd.DataFrame(rows, columns=columns)
    params = {"cases": len(cases), "calibrate": calibrate, "labelled": len(overall)}
    if overall:
        shape = arrays["head_scores_0"].shape[:2]
        quality = np.nanmean(np.array(per_head), axis=0)  # [layer * head, 2]
        model = pd.DataFrame({"layer": LAYER_LEVEL, "head": LAYER_LEVEL, "metric": ["ndcg", "accuracy"],
                              "value": np.nanmean(np.array(overall), axis=0)})
        table = pd.concat([table, head_rows(quality[:, 0].reshape(shape), "ndcg"),
                           head_rows(quality[:, 1].reshape(shape), "top1_accuracy"), model], ignore_index=True)
    return Result("rerank", table, arrays, params)


def read_cases(path: str | Path) -> list[RerankCase]:
    """Cases from a JSONL file, one {"query": str, "documents": [str, ...], "relevance": [number, ...]} object per
    line ("relevance" optional, one grade per document); WorkbenchError naming the file and line of a bad one."""
    path = Path(path)
    cases = []
    for where, row in json_lines(path, "re-ranking file", WorkbenchError):
        if not isinstance(row, dict) or not isinstance(row.get("query"), str):
            raise WorkbenchError(f"{where}: expected an object with a \"query\" string")
        unknown = sorted(set(row) - {"query", "documents", "relevance"})
        documents, relevance = row.get("documents"), row.get("relevance")
        if unknown:
            raise WorkbenchError(f"{where}: unknown key(s) {unknown}; expected query, documents, relevance")
        if not isinstance(documents, list) or not documents or not all(isinstance(d, str) for d in documents):
            raise WorkbenchError(f"{where}: \"documents\" must be a non-empty list of strings")
        if relevance is not None and (not isinstance(relevance, list) or len(relevance) != len(documents)
                                      or not all(isinstance(r, (int, float)) for r in relevance)):
            raise WorkbenchError(f"{where}: \"relevance\" must be a list of {len(documents)} numbers, one per "
                                 f"document, got {relevance!r}")
        cases.append(RerankCase(row["query"], tuple(documents), None if relevance is None else tuple(relevance)))
    if not cases:
        raise WorkbenchError(f"re-ranking file {str(path)!r} has no cases")
    return cases
