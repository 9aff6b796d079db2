"""The machine a benchmark ran on, as its result files name it: the GPU's or the CPU's model name, and the
file-name form of a name; what Triton's cuobjdump reads off a compiled kernel; and the command line and row loop
the benchmarks of the Gluon kernels share. Imported by the benchmark scripts (run as `python benchmarks/NAME.py`,
which puts this folder on the import path)."""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import tempfile
from collections.abc import Callable, Collection
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


def cuobjdump(cubin: bytes, option: str) -> str:
    """What Triton's own cuobjdump prints for `cubin` with `option` ("-sass", "-res-usage"), on any machine."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(tool), option, f.name], capture_output=True, text=True, check=True).stdout


def slug(text: str) -> str:
    """`text` as part of a file name: lower case, every run of other characters one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_results(out: Path, name: str, rows: list[dict], markdown: str) -> None:
    """`rows` as out/<name>_<gpu>.json (with the GPU's, torch's and Triton's versions) and `markdown` as
    out/<name>_<gpu>.md, where <gpu> is the GPU's name as `slug` writes it; the table is printed too."""
    import triton

    gpu = torch.cuda.get_device_name()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}_{slug(gpu)}.json").write_text(json.dumps({"gpu": gpu, "torch": torch.__version__,
                                                              "triton": triton.__version__, "rows": rows}, indent=1))
    (out / f"{name}_{slug(gpu)}.md").write_text(markdown)
    print(markdown)


def gluon_command_line(doc: str, head_dims: Collection[int],
                       extra: Callable[[argparse.ArgumentParser], None] | None = None,
                       ) -> tuple[argparse.Namespace, list[tuple[int, int, int]], list[int]]:
    """The options of a benchmark of the Gluon kernels (its module docstring `doc`): --shapes (heads,kv_heads,
    head_dim with head_dim in head_dims), --lengths (positive multiples of 128), --tag, --out, and what `extra` adds
    to the parser; bad shapes or lengths, or no CUDA GPU, are refused before any work."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--shapes", default="32,8,64;32,32,128", help="heads,kv_heads,head_dim; several with ';'")
    parser.add_argument("--lengths", default="8192,32768")
    parser.add_argument("--tag", default="", help="added to the file names")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
    lengths = [int(x) for x in args.lengths.split(",")]
    bad = [s for s in shapes if len(s) != 3 or s[2] not in head_dims] + [n for n in lengths if n % 128 or n < 128]
    if bad:
        parser.error(f"{bad}: shapes are heads,kv_heads,head_dim with head_dim in {tuple(head_dims)}, lengths "
                     "positive multiples of 128")
    if not torch.cuda.is_available():
        parser.error("the Gluon kernels run on a CUDA GPU (Hopper); none is available")
    return args, shapes, lengths


def write_rows(args: argparse.Namespace, name: str, shapes: list[tuple[int, int, int]], lengths: list[int],
               row: Callable[[tuple[int, int, int], int], dict], markdown: Callable[[str, list[dict]], str]) -> None:
    """`row(shape, length)` for every shape and length, each printed as it comes and the result files
    (`write_results`, <name>[_<tag>] in args.out) rewritten after it, so an interrupted run keeps its rows."""
    name += f"_{args.tag}" if args.tag else ""
    rows = []
    for shape in shapes:
        for length in lengths:
            rows.append(row(shape, length))
            print(json.dumps(rows[-1]), flush=True)
            write_results(Path(args.out), name, rows, markdown(torch.cuda.get_device_name(), rows))
