"""Registers, spills and shared memory of our Triton kernels for a GPU target, compiled without that GPU.

How many programs share a multiprocessor (and so whether one's softmax can run under another's matrix products,
benchmarks/NOTES.md) follows from these numbers: on Hopper 65,536 registers and 228 KB of shared memory per
multiprocessor, 1 KB of it reserved per program. Triton compiles for the target named here with its own ptxas and
reads the resources off the binary with its cuobjdump, so this runs on a machine without a GPU (use the Triton
version of the GPU machine: the code it generates differs between versions). Nothing is timed.

Usage: python benchmarks/kernel_resources.py [--configs 64,128,4,3;128,128,8,3] [--head-dims 64,128]
  [--kernels plain,one_pass,received] [--maxnreg N] [--arch 90]
Prints one line per kernel, configuration and head_dim.
"""

from __future__ import annotations

import argparse
import re

import triton
from hardware import cuobjdump
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from workbench.kernels.triton_forward import stats_forward
from workbench.kernels.triton_received import received_pass

POINTERS = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "Out": "*bf16", "KeyValid": "*i8", "Start": "*i32",
            "SinkKeys": "*i32", "BiasKeys": "*i32", "SourceKeys": "*i32", "TargetKeys": "*i32", "ArgmaxKey": "*i64",
            "BlockKeep": "*i8"}  # every other pointer argument is float32
FLOATS = {"scale", "softcap", "distance_cap"}


def flags(kernel: str, head_dim: int, block_m: int, block_n: int) -> dict:
    """The constexpr arguments of a causal bf16 call on Hopper tensor descriptors: no statistics ("plain"), the
    one-pass statistics ("one_pass", with a distance cap) or the `received` pass ("received")."""
    common = dict(HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_M=block_m, BLOCK_N=block_n,
                  CAUSAL=True, TMA=True, BLOCK_KEEP=False, WINDOW=False, SOFTCAP=False, PADDED=False,
                  TEMPERATURE=False, N_BIAS=0, PRECISION="tf32", REDIST=False, N_SOURCE=0, N_TARGET=0,
                  REST_TARGETS=False)
    if kernel == "received":
        return common | dict(RECEIVED=True, BLOCK_MASS=False, BLOCK_MAX=False)
    stats = kernel == "one_pass"
    return common | dict(GATE=False, MIX=False, N_SINK=1, LSE=stats, NORM=False, ENTROPY=stats, SINK=stats,
                         MAX=stats, DISTANCE=stats, SELF=stats, CAP=stats, FOLD=True, SINK_LOGIT=False,
                         LEARNED_MASS=stats)


def signature(fn, constants: dict, block_m: int, block_n: int, block_d: int) -> dict[str, str]:
    """Triton's type string of each argument of fn (tensor descriptors with this configuration's tiles)."""
    types = {}
    for name in fn.arg_names:
        if name in constants:
            types[name] = "constexpr"
        elif name.startswith("Desc"):
            types[name] = f"tensordesc<bf16[1, 1, {block_m if name == 'DescQ' else block_n}, {block_d}]>"
        elif name[0].isupper():
            types[name] = POINTERS.get(name, "*fp32")
        else:
            types[name] = "fp32" if name in FLOATS else "i32"
    return types


def resources(kernel: str, config: tuple[int, int, int, int], head_dim: int, arch: int,
              maxnreg: int | None) -> dict[str, int]:
    """Registers per thread, stack (spilled) bytes per thread and shared memory bytes of one compiled kernel."""
    block_m, block_n, warps, stages = config
    fn = received_pass if kernel == "received" else stats_forward
    constants = {k: v for k, v in flags(kernel, head_dim, block_m, block_n).items() if k in fn.arg_names}
    source = ASTSource(fn, signature(fn, constants, block_m, block_n, constants["BLOCK_D"]), constexprs=constants)
    options = dict(num_warps=warps, num_stages=stages, **({"maxnreg": maxnreg} if maxnreg else {}))
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    usage = cuobjdump(compiled.asm["cubin"], "-res-usage")
    read = lambda key: int(re.search(rf"{key}:(\d+)", usage).group(1))  # noqa: E731
    return {"registers": read("REG"), "stack": read("STACK"), "shared": compiled.metadata.shared}


def programs_per_sm(r: dict[str, int], warps: int, registers: int = 65536, shared: int = 233472) -> int:
    """How many programs fit on one multiprocessor (Hopper's register file and shared memory by default)."""
    by_registers = registers // (warps * 32 * (-(-r["registers"] // 8) * 8))
    return min(by_registers, shared // (r["shared"] + 1024))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="64,128,4,3;64,64,4,3;128,128,8,3",
                        help="BLOCK_M,BLOCK_N,warps,stages; several separated by ';'")
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--kernels", default="plain,one_pass,received")
    parser.add_argument("--maxnreg", type=int, default=None, help="cap the registers per thread (ptxas spills)")
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: Hopper)")
    args = parser.parse_args()
    kernels = args.kernels.split(",")
    unknown = [k for k in kernels if k not in ("plain", "one_pass", "received")]
    if unknown:
        parser.error(f"--kernels: unknown {unknown}; known: plain, one_pass, received")
    configs = [tuple(int(x) for x in c.split(",")) for c in args.configs.split(";")]
    bad = [c for c in configs if len(c) != 4]
    if bad:
        parser.error(f"--configs: {bad} are not BLOCK_M,BLOCK_N,warps,stages")
    print(f"triton {triton.__version__}, sm_{args.arch}" + (f", maxnreg {args.maxnreg}" if args.maxnreg else ""))
    for head_dim in (int(x) for x in args.head_dims.split(",")):
        for config in configs:
            for kernel in kernels:
                r = resources(kernel, config, head_dim, args.arch, args.maxnreg)
                print(f"head_dim {head_dim:>3}  {','.join(map(str, config)):<12} {kernel:<9} "
                      f"registers {r['registers']:>3}  spilled {r['stack']:>4} B  "
                      f"shared {r['shared'] / 1024:6.1f} KiB  "
                      f"programs per SM {programs_per_sm(r, config[2])}")


if __name__ == "__main__":
    main()
