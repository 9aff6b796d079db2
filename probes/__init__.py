"""Analyzers: read a Trace (or drive a model) and return tidy per-head tables of findings.

Every probe is `probe(trace_or_subject, **options) -> Result` with `.table` (layer, head, metric, value)
and `.arrays`: `sinks`, `entropy`, `erank`, `heads`, `retrieval`, `rerank` and `sparsity` (where each head's
attention mass sits, block by block) read a Trace or drive a model; `tasks` holds the prompt sets that `circuits`
and the ablation sweep score; `findings` runs them all for a model's page.
"""
