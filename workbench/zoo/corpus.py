"""The zoo's real-text corpus: the Python standard library's own source, which every machine with Python has.

Rebuilt deterministically from the running interpreter (every .py file under `sysconfig`'s stdlib folder, in
path order, leaving out site-packages and the test suites), so the corpus depends only on the Python version;
its sha256 goes on the model card. `load(path)` reads a saved copy instead (the GPU machine has another Python).
"""

from __future__ import annotations

import hashlib
import lzma
import platform
import sysconfig
from pathlib import Path

SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "lib2to3"}


def stdlib_source(max_chars: int = 20_000_000) -> str:
    """The standard library's .py files, concatenated in path order, up to `max_chars` characters."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    paths = sorted(p for p in root.rglob("*.py") if not SKIP & set(p.relative_to(root).parts))
    for path in paths:
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "\n".join(parts)[:max_chars]


def load(path: Path) -> str:
    """A corpus saved by `save` (xz-compressed text)."""
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return f.read()


def save(text: str, path: Path) -> None:
    """Write the corpus xz-compressed (about a fifth of its size), to carry it to another machine."""
    with lzma.open(path, "wt", encoding="utf-8") as f:
        f.write(text)


def describe(text: str) -> dict:
    """What the card records about a corpus: its source, size and sha256."""
    return {"source": f"Python {platform.python_version()} standard library (*.py, no tests)",
            "characters": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}
