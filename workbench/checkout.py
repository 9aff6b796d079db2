"""Python started in a checkout of this repository (`python -m ...`, a REPL, pytest): the checkout's folder
`kernels/`, which installs as `workbench.kernels`, then sits on sys.path as a top-level package and hides Hugging
Face's `kernels`, which transformers imports when it starts (and fails on, not finding its names)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout, in an editable install; site-packages otherwise


def unshadow_hub_kernels() -> None:
    """Load Hugging Face's `kernels` as `kernels` where that name would load this checkout's folder and the package
    is installed. Elsewhere nothing changes: without the package, transformers finds no `kernels` distribution and
    does not import the name."""
    if "kernels" in sys.modules:
        return
    found = importlib.util.find_spec("kernels")
    if found is None or found.origin is None or Path(found.origin).resolve() != ROOT / "kernels" / "__init__.py":
        return
    path = [entry for entry in sys.path if Path(entry or ".").resolve() != ROOT]
    hub = importlib.machinery.PathFinder.find_spec("kernels", path)
    if hub is None or hub.loader is None:
        return
    module = importlib.util.module_from_spec(hub)
    sys.modules["kernels"] = module
    try:
        hub.loader.exec_module(module)
    except BaseException:
        del sys.modules["kernels"]
        raise
