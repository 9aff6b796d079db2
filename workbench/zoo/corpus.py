"""The zoo's real-text corpus: Python source that every machine with this project installed already has.

The Python standard library's own .py files, then those of the packages the workbench installs with it
(numpy, pandas, torch, transformers), each in path order, leaving out test suites. About 120M characters
(35M tokens of the organism's tokenizer): enough that a small model trained for minutes sees most of it a
few times rather than memorizing it, which is what lets generic mechanisms (induction heads, first-token
sinks) form instead of a lookup table (Gu et al. 2024, "When Attention Sink Emerges in Language Models":
sinks appear only with sufficient training data). The corpus depends only on the Python and package
versions, which `describe` records with its sha256 for the model card; `load(path)` reads a saved copy (the
GPU machine has another Python).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import lzma
import platform
import sysconfig
from pathlib import Path

SKIP = {"site-packages", "dist-packages", "test", "tests", "testing", "idle_test", "lib2to3"}
PACKAGES = ("numpy", "pandas", "torch", "transformers")


def _sources(root: Path) -> list[str]:
    """The .py files under `root` in path order, test folders left out."""
    paths = sorted(p for p in root.rglob("*.py") if not SKIP & set(p.relative_to(root).parts))
    return [p.read_text(encoding="utf-8", errors="replace") for p in paths]


def stdlib_source() -> str:
    """The standard library's .py files, concatenated in path order."""
    return "\n".join(_sources(Path(sysconfig.get_paths()["stdlib"])))


def python_source(packages: tuple[str, ...] = PACKAGES) -> str:
    """The corpus: the standard library's source, then each package's, in the order given."""
    parts = [stdlib_source()]
    for name in packages:
        parts += _sources(Path(importlib.import_module(name).__file__).parent)
    return "\n".join(parts)


def load(path: Path) -> str:
    """A corpus saved by `save` (xz-compressed text)."""
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return f.read()


def save(text: str, path: Path) -> None:
    """Write the corpus xz-compressed (about an eighth of its size), to carry it to another machine, and its
    `describe` beside it (PATH.json), since the other machine has other versions."""
    with lzma.open(path, "wt", encoding="utf-8", preset=6) as f:
        f.write(text)
    Path(f"{path}.json").write_text(json.dumps(describe(text)))


def describe_saved(path: Path) -> dict:
    """The `describe` of a corpus saved by `save`, as written where it was built."""
    return json.loads(Path(f"{path}.json").read_text())


def describe(text: str, packages: tuple[str, ...] = PACKAGES) -> dict:
    """What the card records about a corpus: its source (with versions), size and sha256."""
    versions = "".join(f", then {name} {importlib.metadata.version(name)}" for name in packages)
    return {"source": f"Python {platform.python_version()} standard library{versions} (*.py, no tests)",
            "characters": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}
