"""Analyzers: read a Trace (or drive a model) and return tidy per-head tables of findings.

Every probe is `probe(trace_or_subject, **options) -> Result` with `.table` (layer, head, metric, value)
and `.arrays`. The probes themselves land with the Probes issue; this package holds their place in the layout.
"""
