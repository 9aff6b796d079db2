"""Our Triton kernel under pinned tile configurations, with and without tensor descriptors, against cuDNN SDPA.

The autotuner of `workbench.kernels.triton_attention` picks one configuration per length; this benchmark shows
them all side by side (what `benchmarks/NOTES.md` reads the effect of each kernel change from). For every
configuration (BLOCK_M, BLOCK_N, warps, stages) and loads (tensor descriptors on Hopper, or pointer loads,
WORKBENCH_TRITON_TMA=0), one process per variant, pinned with WORKBENCH_TRITON_CONFIG: the kernels are compiled
in parallel first (one process per variant, into Triton's disk cache), then timed one variant at a time
(`triton.testing.do_bench` median, bf16, causal, batch 1): no statistics, the one-pass statistics and every
per-query statistic plus `received`; cuDNN SDPA is timed on the same inputs in the first variant's process.

A configuration "64,128,4,3/64,64,4,3" pins the `received` pass to the tiles after the slash, and a fifth
number caps the registers a thread (maxnreg), as WORKBENCH_TRITON_CONFIG reads them.

Usage: python benchmarks/kernel_variants.py [--configs 128,64,8,3;128,128,8,3] [--lengths 8192,32768]
  [--shapes 32,32,128;32,8,64] [--loads descriptors,pointers] [--tag NAME] [--out benchmarks/results]
Writes kernel_variants_[<tag>_]<gpu>.json and .md into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

RUNS = ("plain", "one_pass", "all")


def child(shapes: list[tuple[int, int, int]], lengths: list[int], anchor: bool) -> None:
    """Time this process's variant (pinned by the environment) at every shape and length; one JSON line each."""
    import torch
    import torch.nn.functional as F
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from workbench.kernels import KEY_STATS, QUERY_STATS
    from workbench.kernels.triton_attention import attention

    stats = {"plain": (), "one_pass": QUERY_STATS, "all": QUERY_STATS + KEY_STATS}
    for heads, kv_heads, head_dim in shapes:
        for length in lengths:
            g = torch.Generator(device="cuda").manual_seed(0)
            q, k, v = (torch.randn(1, h, length, head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
                       for h in (heads, kv_heads, kv_heads))
            row = {"shape": f"{heads}x{kv_heads}x{head_dim}", "L": length}
            for name in RUNS:
                try:
                    row[name] = triton.testing.do_bench(partial(attention, q, k, v, causal=True, stats=stats[name]),
                                                        warmup=25, rep=150, return_mode="median")
                except Exception as err:  # a configuration that does not fit (shared memory, registers)
                    row[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            if anchor:
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    row["cudnn"] = triton.testing.do_bench(
                        partial(F.scaled_dot_product_attention, q, k, v, is_causal=True, enable_gqa=True),
                        warmup=25, rep=150, return_mode="median")
            print(json.dumps(row), flush=True)


def run_variant(config: str, tma: bool, args: argparse.Namespace, lengths: str, anchor: bool) -> list[dict]:
    """One variant in its own process (its pinned configuration is read at import). config: the forward's
    tiles, or "FORWARD/RECEIVED" to pin the `received` pass to other tiles."""
    forward, _, received = config.partition("/")
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_TRITON_RECEIVED_CONFIG"}
    env.update(WORKBENCH_TRITON_CONFIG=forward, WORKBENCH_TRITON_TMA="1" if tma else "0")
    if received:
        env["WORKBENCH_TRITON_RECEIVED_CONFIG"] = received
    cmd = [sys.executable, __file__, "--child", "--shapes", args.shapes, "--lengths", lengths]
    done = subprocess.run(cmd + (["--anchor"] if anchor else []), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"variant {config} failed:\n" + "\n".join(done.stderr.splitlines()[-5:]), file=sys.stderr, flush=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return [dict(row, config=config, tma=tma) for row in rows]


def table(rows: list[dict], gpu: str, command: str) -> str:
    """Markdown: one line per shape, length and variant, ms and the ratio to cuDNN SDPA of the same inputs."""
    cudnn = {(r["shape"], r["L"]): r["cudnn"] for r in rows if "cudnn" in r}
    lines = [f"# Kernel variants on {gpu}", "",
             f"bf16, causal, batch 1; median ms (ratio to cuDNN SDPA on the same inputs). Command: `{command}`.", "",
             "| shape | L | tiles (M, N, warps, stages, maxnreg if capped; received pass after /) | loads "
             "| no statistics | one-pass | all (+received) |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["shape"], r["L"], r["config"], r["tma"])):
        anchor = cudnn.get((r["shape"], r["L"]))
        cells = [f"{r[n]:.3f} ({r[n] / anchor:.2f}x)" if isinstance(r[n], float) and anchor else str(r[n])[:40]
                 for n in RUNS]
        loads = "descriptors" if r["tma"] else "pointers"
        lines.append(f"| {r['shape']} | {r['L']} | {r['config']} | {loads} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="128,64,8,3;128,128,8,3;128,128,8,2;128,64,4,3")
    parser.add_argument("--lengths", default="8192,32768")
    parser.add_argument("--shapes", default="32,32,128;32,8,64")
    parser.add_argument("--loads", default="descriptors,pointers",
                        help="which loads to time: descriptors (tensor descriptors, Hopper), pointers, or both")
    parser.add_argument("--tag", default="", help="a name for this set of variants, put into the file names")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--anchor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
        child(shapes, [int(x) for x in args.lengths.split(",")], args.anchor)
        return
    import torch
    from hardware import write_results

    loads = {"pointers": False, "descriptors": True}
    unknown = [x for x in args.loads.split(",") if x not in loads]
    if unknown:
        parser.error(f"--loads: unknown {unknown}; known: {list(loads)}")
    variants = [(config, loads[x]) for config in args.configs.split(";") for x in args.loads.split(",")]
    with ThreadPoolExecutor(len(variants)) as pool:  # compile every variant at once, at a short length
        list(pool.map(lambda v: run_variant(*v, args, "1024", False), variants))
    rows = []
    for i, (config, tma) in enumerate(variants):
        rows += run_variant(config, tma, args, args.lengths, anchor=i == 0)
        print(f"timed {config} {'descriptors' if tma else 'pointers'}", flush=True)
    shown = [f"--{k} '{v}'" for k, v in vars(args).items() if k in ("configs", "shapes", "lengths", "loads", "tag")]
    command = "python benchmarks/kernel_variants.py " + " ".join(shown)
    name = "kernel_variants" + (f"_{args.tag}" if args.tag else "")
    write_results(Path(args.out), name, rows, table(rows, torch.cuda.get_device_name(), command))


if __name__ == "__main__":
    main()
