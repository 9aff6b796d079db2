"""Attention Workbench: load a transformer, trace what every attention head does, store and report it.

    import workbench
    subject = workbench.load()                      # SmolLM2-135M, offline from PyPI
    trace = workbench.trace(subject, "The capital of France is Paris.")
    trace.head_table()                              # layer, head, metric, value
"""

from workbench.checkout import unshadow_hub_kernels

unshadow_hub_kernels()  # before transformers is imported

from workbench.errors import (  # noqa: E402
    ContextLengthError,
    DeviceError,
    HeadNotFoundError,
    UnknownModelError,
    WorkbenchError,
)
from workbench.loading import DEFAULT_MODEL, known_names, load  # noqa: E402
from workbench.subject import Subject  # noqa: E402
from workbench.trace import Trace, layer_summary  # noqa: E402
from workbench.tracer import DEFAULT_STATS, capture, trace  # noqa: E402

__version__ = "0.1.0"


def __getattr__(name: str):
    """`workbench.Store` imports DuckDB only when first used: the kernels and the tracer run without it."""
    if name == "Store":
        from workbench.store import Store

        return Store
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")

__all__ = [
    "DEFAULT_MODEL", "DEFAULT_STATS", "ContextLengthError", "DeviceError", "HeadNotFoundError", "Store",
    "Subject", "Trace", "UnknownModelError", "WorkbenchError", "capture", "known_names", "layer_summary",
    "load", "trace",
]
