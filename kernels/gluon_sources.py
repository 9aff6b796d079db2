"""The Gluon kernels compiled for Hopper (sm_90a) on a machine without a GPU: what the CPU tests check lowers, and
what `benchmarks/gluon_code.py` reads the compiled key loops from.

Triton compiles for the target named here with its own ptxas, as it would on the GPU, so registers, spills and
SASS match a GPU machine's where the Triton version does (the code Triton generates differs between versions).
Arguments are typed as a bf16 causal call takes them (`gluon_attention` launches the same kernels).
"""

from __future__ import annotations

import os
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource

from workbench.kernels import gluon_attention, gluon_forward, gluon_received

KERNELS = ("forward", "received")


def hopper_source(kernel: str, head_dim: int, constexprs: dict[str, int]) -> GluonASTSource:
    """The Gluon `kernel` ("forward": `gluon_forward.gluon_stats_forward`, "received":
    `gluon_received.gluon_received_pass`) at head_dim, bf16, with its constexpr arguments (the received pass's
    STAGES, GROUP and PROGRAMS)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: expected one of {KERNELS}")
    desc = {rows: f"tensordesc<bf16[{rows}, {head_dim}],"
                  f"{gl.NVMMASharedLayout.get_default_for([rows, head_dim], gl.bfloat16)!r}>" for rows in (64, 128)}
    if kernel == "forward":
        fn = gluon_forward.gluon_stats_forward
        types = dict(q_desc=desc[64], k_desc=desc[gluon_attention.BLOCK_N], v_desc=desc[gluon_attention.BLOCK_N],
                     out_ptr="*bf16", argmax_ptr="*i64", sink_ptr="*i32", k_ptr="*bf16", post="fp32", cap="fp32",
                     FLAGS="constexpr", STAGES="constexpr")
    else:
        fn = gluon_received.gluon_received_pass
        rows = gluon_received.BLOCK_QUERIES[constexprs["PROGRAMS"]]
        types = dict(q_desc=desc[rows], k_desc=desc[64], post="fp32", STAGES="constexpr", GROUP="constexpr",
                     PROGRAMS="constexpr", c_desc=f"tensordesc<fp32[{rows}],{gluon_received.C_LAYOUT!r}>")
    signature = {name: "i32" for name in fn.arg_names}
    signature.update({name: "*fp32" for name in fn.arg_names if name.endswith("_ptr")}, **types)
    return GluonASTSource(fn, signature, constexprs=constexprs)


def compile_for_hopper(kernel: str, head_dim: int, constexprs: dict[str, int]):
    """`hopper_source` compiled for sm_90a with 4 warps a partition, and the received pass's registers a thread
    where its PROGRAMS caps them (Triton's CompiledKernel: its PTX, cubin and metadata)."""
    options = gluon_received.launch_options(constexprs["PROGRAMS"]) if kernel == "received" else {"num_warps": 4}
    return triton.compile(hopper_source(kernel, head_dim, constexprs), target=GPUTarget("cuda", 90, 32),
                          options=options)


def ptxas_report(ptx: str) -> str:
    """What Triton's ptxas says (-v) compiling `ptx` for sm_90a: registers, spills, and its notes, such as C7514
    where it serializes a wgmma."""
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w") as f:
            f.write(ptx)
        done = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", source, "-o",
                               os.path.join(folder, "kernel.cubin")], capture_output=True, text=True)
    if done.returncode != 0 or "Used" not in done.stderr:
        raise RuntimeError(f"ptxas failed: {done.stderr[-2000:]}")
    return done.stderr
