"""Compile kernels/cpu_rows.c once per machine and load it: the row pass of `workbench.kernels.cpu`.

The C file includes no PyTorch header, so gcc builds it in about half a second (an extension that includes
torch/extension.h takes tens of seconds); it is built for the machine's own instruction set (-march=native, which
gives AVX-512 where there is some) and kept in a cache folder keyed by the source, the flags and the processor, so
a later process only loads it. Builds are atomic (written aside, then renamed): processes that start together
(pytest -n) may each build, none reads a half-written library. The OpenMP runtime it links is the libgomp that
PyTorch has already loaded, so its threads are PyTorch's.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("cpu_rows.c")
FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC")
CACHE_VARIABLE = "WORKBENCH_KERNEL_CACHE"  # where the built library is kept; default ~/.cache/attention-workbench


class Chunk(ctypes.Structure):
    """The argument block of `softmax_rows` (struct chunk in cpu_rows.c, field for field)."""

    _fields_ = [
        ("scores", ctypes.c_void_p), ("rows", ctypes.c_int64), ("width", ctypes.c_int64),
        ("heads", ctypes.c_int64), ("n_queries", ctypes.c_int64), ("first_query", ctypes.c_int64),
        ("first_key", ctypes.c_int64), ("n_keys", ctypes.c_int64), ("causal", ctypes.c_int64),
        ("window", ctypes.c_int64), ("valid", ctypes.c_void_p), ("start", ctypes.c_void_p),
        ("inv_temperature", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("sink_keys", ctypes.c_void_p),
        ("n_sink", ctypes.c_int64), ("distance_cap", ctypes.c_float), ("fraction", ctypes.c_void_p),
        ("source_keys", ctypes.c_void_p), ("target_keys", ctypes.c_void_p), ("n_source", ctypes.c_int64),
        ("n_target", ctypes.c_int64), ("out_length", ctypes.c_int64),
        ("out_offset", ctypes.c_int64), ("lse", ctypes.c_void_p), ("entropy", ctypes.c_void_p),
        ("sink_mass", ctypes.c_void_p), ("max_prob", ctypes.c_void_p), ("window_distance", ctypes.c_void_p),
        ("self_mass", ctypes.c_void_p), ("argmax_key", ctypes.c_void_p), ("sink_logit", ctypes.c_void_p),
        ("learned_sink_mass", ctypes.c_void_p), ("received", ctypes.c_void_p),
    ]


class BuildError(RuntimeError):
    """The C row pass could not be compiled or loaded on this machine (no C compiler, no OpenMP)."""


def _cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attention-workbench"
    return Path(os.environ.get(CACHE_VARIABLE) or default) / "cpu-kernels"


def _processor() -> str:
    """What -march=native depends on: the processor's feature flags where Linux lists them."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line for line in info.splitlines() if line.startswith("flags")), platform.machine())


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        try:
            done = subprocess.run([compiler, *FLAGS, "-o", str(built), str(SOURCE)], capture_output=True, text=True)
        except OSError as err:
            raise BuildError(f"cannot run the C compiler {compiler!r} ({err}); set CC to one") from err
        if done.returncode:
            raise BuildError(f"{compiler} could not build {SOURCE.name}: {done.stderr.strip()[-2000:]}")
        os.replace(built, target)


@functools.cache
def library() -> ctypes.CDLL:
    """The loaded row pass, built first if this machine's cache lacks it. Raises BuildError when it cannot be."""
    compiler = os.environ.get("CC", "cc")
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, *FLAGS, _processor()]).encode()).hexdigest()
    target = _cache_dir() / f"cpu_rows-{key[:16]}.so"
    if not target.exists():
        _build(compiler, target)
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as err:
        raise BuildError(f"cannot load {target}: {err}") from err
    lib.softmax_rows.argtypes = [ctypes.POINTER(Chunk)]
    lib.softmax_rows.restype = ctypes.c_int
    return lib
