"""The machine a benchmark ran on, as its result files name it: the GPU's or the CPU's model name, and the
file-name form of a name. Imported by the benchmark scripts (run as `python benchmarks/NAME.py`, which puts this
folder on the import path)."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name, from Linux's /proc/cpuinfo where it has one, else what `platform` knows."""
    name = platform.processor() or platform.machine()
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return name


def device_name() -> str:
    """The GPU's name where CUDA is available, else the CPU's."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()


def slug(text: str) -> str:
    """`text` as part of a file name: lower case, every run of other characters one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_results(out: Path, name: str, rows: list[dict], markdown: str) -> None:
    """`rows` as out/<name>_<gpu>.json (with the GPU's, torch's and Triton's versions) and `markdown` as
    out/<name>_<gpu>.md, where <gpu> is the GPU's name as `slug` writes it; the table is printed too."""
    import json

    import triton

    gpu = torch.cuda.get_device_name()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}_{slug(gpu)}.json").write_text(json.dumps({"gpu": gpu, "torch": torch.__version__,
                                                              "triton": triton.__version__, "rows": rows}, indent=1))
    (out / f"{name}_{slug(gpu)}.md").write_text(markdown)
    print(markdown)
