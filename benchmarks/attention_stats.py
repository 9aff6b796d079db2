"""Speed and memory of attention with statistics on a GPU, against the fastest attention in the same run.

Kernel level (batch 1, causal, bf16; 32 heads x 128 and 32 query / 8 key-value heads x 64 by default), for each
context length, median time (triton.testing.do_bench: warm-up, compilation and autotuning excluded, L2 flushed
between runs) and peak extra memory of the anchors
  sdpa            torch SDPA as users call it (it picks cuDNN on Hopper)
  sdpa_cudnn      SDPA forced onto cuDNN        sdpa_flash   SDPA forced onto its flash backend (FA2)
  flex            FlexAttention, compiled, with a causal block mask
  fa4             FlashAttention-4 (flash-attn-4, CuTe DSL) where it is installed
and of ours:
  ours_plain      our kernel, no statistics
  ours_stats      our kernel, the one-pass statistics (lse, entropy, sink mass, max prob, argmax, distance,
                  self mass)
  ours_received   ours_stats plus the second, dK-style pass for `received`
  ours_block_mass_B  (with --block-mass B,...) ours_received plus `block_mass` in blocks of B, which the second
                  pass folds in by atomic adds; ours_block_max_B adds the max-pooled `block_max` as well
  ours_sparse_F   (with --block-keep F,...) ours_stats under the block-sparse edit keeping a random fraction F of
                  each query block's visible key blocks of 128 (always its first and diagonal ones): the tiles
                  it drops are skipped, so the time falls with F
  eager_entropy   materialized softmax + entropy (what hooks on attention weights cost); OOM is recorded
Each of ours carries its ratio to the fastest anchor of the row (`vs_fastest`, the anchor named in the row) and
to cuDNN SDPA (`vs_cudnn`). --breakdown adds our kernel with one statistic at a time (what each one costs).
Model level: random-init models of the shapes in benchmarks/configs/ (--model-configs: a 1.1B Llama, SmolLM2-135M,
Gemma-3-270M, Llama-3-8B; speed does not depend on the weights) in bf16, the plain sdpa forward (as users run
it) against `workbench.capture` with no statistics (which runs the fastest attention, see
`workbench.kernels.fastest`), with the one-pass statistics, and with every statistic (`received` too); the
statistics are handed to the host by `Capture.statistics`, as `workbench.trace` does (copied while the later
layers run, `workbench.host_records`; median of 3 to 50 forwards, each between CUDA events, after one untimed
forward).

Before timing, every autotuned configuration of the kernels is compiled in parallel, one process per
configuration (WORKBENCH_TRITON_CONFIG pins it), into Triton's disk cache: the autotuner then only loads.

Usage: python benchmarks/attention_stats.py [--lengths 8192,...] [--shapes 32,32,128;32,8,64] [--breakdown]
  [--block-mass 128,...] [--block-keep 0.5,...] [--distance-cap 128]
  [--model-lengths 4096,...] [--model-configs llama-1.1b,...] [--out DIR] [--tag NAME]
Writes attention_stats_kernel[_<shape>][_<tag>]_<gpu> (the shape, as 32-8-64, unless it is 32,32,128) and
attention_stats_model_<config>[_<tag>]_<gpu>, .json and .md, into --out (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
from hardware import slug

from workbench.kernels import KEY_STATS, QUERY_STATS, HeadEdits, gluon_attention
from workbench.kernels.triton_attention import CONFIGS, PINNED, PINNED_RECEIVED, attention

DEFAULT_SHAPE = (32, 32, 128)  # query heads, key-value heads, head_dim
CONFIGS_DIR = Path(__file__).parent / "configs"  # model shapes: llama-1.1b, smollm2-135m, gemma3-270m, llama3-8b


def measure(fn) -> dict:
    """Median ms (triton.testing.do_bench) and peak extra memory (GiB) of fn(); {'error': 'OOM'} when it runs
    out of memory. The first call compiles and autotunes; the peak is read on the second."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    try:
        fn()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"error": "OOM"}
    except RuntimeError as err:  # an SDPA backend that does not take these inputs
        return {"error": f"unsupported: {str(err).splitlines()[0][:120]}"}
    return {"ms": ms, "peak_gib": peak}


def measure_forward(fn, budget_ms: float = 1000.0) -> dict:
    """measure() for whole model forwards (up to seconds each): one untimed call, the peak read on the
    second, then 3 to 50 calls (about `budget_ms` in all) timed one by one with CUDA events; the median."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    try:
        fn()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        first = timed(fn)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        times = [first] + [timed(fn) for _ in range(max(2, min(49, int(budget_ms / max(first, 1e-3)))))]
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"error": "OOM"}
    return {"ms": statistics.median(times), "peak_gib": peak, "runs": len(times)}


def timed(fn) -> float:
    """Milliseconds of one call of fn, between CUDA events."""
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end)


def eager_entropy(q, k, v):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    L = q.shape[2]
    s.masked_fill_(torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    p = torch.softmax(s, -1)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    return p.to(v.dtype) @ v, entropy


def bf16_inputs(L: int, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q, k, v [1, heads, L, head_dim] in bf16 for (query heads, kv heads, head_dim) `shape`."""
    heads, kv_heads, head_dim = shape
    g = torch.Generator(device="cuda").manual_seed(L)
    return tuple(torch.randn(1, h, L, head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
                 for h in (heads, kv_heads, kv_heads))


class Extra(NamedTuple):
    """What our variants ask beyond the defaults: block_mass in blocks of each of `block_sizes`, the block-sparse
    edit at each of `keep_fractions`, and the cap on window_distance (None: uncapped, as `workbench.trace`)."""
    block_sizes: tuple[int, ...] = ()
    keep_fractions: tuple[float, ...] = ()
    distance_cap: int | None = None

    def arguments(self) -> list[str]:
        """The command-line options that give this Extra back."""
        return ((["--block-mass", ",".join(map(str, self.block_sizes))] if self.block_sizes else [])
                + (["--block-keep", ",".join(map(str, self.keep_fractions))] if self.keep_fractions else [])
                + (["--distance-cap", str(self.distance_cap)] if self.distance_cap is not None else []))


NO_EXTRA = Extra()  # the defaults: no block statistics, no block-sparse edit, window_distance uncapped


def random_block_keep(heads: int, L: int, fraction: float, size: int = 128) -> torch.Tensor:
    """A block_keep mask [heads, 1, n, n] of blocks of `size` keeping, per head and query block, a random
    `fraction` of the key blocks a causal row sees, and always the first and the diagonal block."""
    n = -(-L // size)
    g = torch.Generator(device="cuda").manual_seed(n)
    keep = torch.rand(heads, 1, n, n, device="cuda", generator=g) < fraction
    keep[..., 0] = True
    keep |= torch.eye(n, dtype=torch.bool, device="cuda")
    return keep & torch.ones(n, n, dtype=torch.bool, device="cuda").tril()


def our_variants(q, k, v, extra: Extra = NO_EXTRA) -> dict:
    """(b), (c) and (d): our kernel without statistics, with the one-pass statistics, and with `received`; then
    with `block_mass` (and `block_max`) beside `received` in blocks of each of `extra.block_sizes`, and the
    one-pass statistics under the block-sparse edit at each of `extra.keep_fractions`."""
    per_token = QUERY_STATS + KEY_STATS
    cap = extra.distance_cap
    variants = {
        "ours_plain": lambda: attention(q, k, v),
        "ours_stats": lambda: attention(q, k, v, stats=QUERY_STATS, distance_cap=cap),
        "ours_received": lambda: attention(q, k, v, stats=per_token, distance_cap=cap),
    }
    for size in extra.block_sizes:
        variants[f"ours_block_mass_{size}"] = lambda size=size: attention(
            q, k, v, stats=per_token + ("block_mass",), distance_cap=cap, block_size=size)
        variants[f"ours_block_max_{size}"] = lambda size=size: attention(
            q, k, v, stats=per_token + ("block_mass", "block_max"), distance_cap=cap, block_size=size)
    for fraction in extra.keep_fractions:
        edits = HeadEdits(block_keep=random_block_keep(q.shape[1], q.shape[2], fraction), keep_block_size=128)
        variants[f"ours_sparse_{fraction:g}"] = lambda edits=edits: attention(
            q, k, v, stats=QUERY_STATS, distance_cap=cap, edits=edits)
    return variants


def precompile(shapes: list[tuple[int, int, int]], extra: Extra = NO_EXTRA) -> float:
    """Compile every configuration of CONFIGS for our variants at `shapes`, one process per configuration, in
    parallel; return the seconds it took. The processes run 256-token inputs: the compiled kernels are the
    same (lengths only enter as integers divisible by 16), and Triton's disk cache hands them to the
    autotuner of this process."""
    start = time.time()
    arg = ";".join(",".join(map(str, shape)) for shape in shapes)
    processes = [
        subprocess.Popen([sys.executable, __file__, "--compile-only", arg, *extra.arguments()], env={
            **os.environ, "WORKBENCH_TRITON_CONFIG": f"{c.kwargs['BLOCK_M']},{c.kwargs['BLOCK_N']},{c.num_warps},"
                                                     f"{c.num_stages}"})
        for c in CONFIGS
    ]
    for process in processes:
        process.wait()
    return time.time() - start


def compile_only(shapes: list[tuple[int, int, int]], extra: Extra = NO_EXTRA) -> None:
    """Run each of our variants once at 256 tokens for every shape (in a process that pins one configuration)."""
    for shape in shapes:
        for fn in our_variants(*bf16_inputs(256, shape), extra).values():
            fn()
    torch.cuda.synchronize()


ANCHORS = ("sdpa", "sdpa_cudnn", "sdpa_flash", "flex", "fa4")
OURS = ("ours_plain", "ours_stats", "ours_received", "eager_entropy")


def anchors(q, k, v) -> dict:
    """The attention implementations to beat, each as a no-argument call on the same inputs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from workbench.kernels.fastest import flash_attention_4

    gqa = q.shape[1] != k.shape[1]

    def sdpa(backend=None):
        def run():
            if backend is None:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        return run

    L = q.shape[2]
    block_mask = create_block_mask(lambda b, h, i, j: i >= j, None, None, L, L, device="cuda", _compile=True)
    flex = torch.compile(flex_attention)
    cases = {"sdpa": sdpa(), "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
             "sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION),
             "flex": lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=gqa)}
    fa4 = flash_attention_4()
    if fa4 is not None:
        qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        cases["fa4"] = lambda: fa4(qt, kt, vt, causal=True)
    return cases


def kernel_row(L: int, with_eager: bool, shape: tuple[int, int, int], breakdown: bool = False,
               extra: Extra = NO_EXTRA) -> dict:
    """Time and memory of every anchor and variant at context length L, for (query heads, kv heads, head_dim)."""
    heads, kv_heads, head_dim = shape
    q, k, v = bf16_inputs(L, shape)
    flops = 2 * heads * L * L * head_dim  # causal: half of the 4 L^2 D of QK^T and PV

    cases = {**anchors(q, k, v), **our_variants(q, k, v, extra)}
    if breakdown:
        cases.update({f"ours_only_{name}": (lambda name=name: attention(q, k, v, stats=(name,),
                                                                          distance_cap=extra.distance_cap))
                      for name in QUERY_STATS})
    if with_eager:
        cases["eager_entropy"] = lambda: eager_entropy(q, k, v)
    row = {"L": L}
    for name, fn in cases.items():
        row[name] = measure(fn)
        if "ms" in row[name]:
            row[name]["tflops"] = flops / row[name]["ms"] / 1e9
    row.setdefault("eager_entropy", {"error": "OOM at a shorter length"})
    timed_anchors = {name: row[name]["ms"] for name in ANCHORS if "ms" in row.get(name, {})}
    row["fastest"] = min(timed_anchors, key=timed_anchors.get)
    for entry in row.values():
        if isinstance(entry, dict) and "ms" in entry:
            entry["vs_fastest"] = entry["ms"] / timed_anchors[row["fastest"]]
            if "sdpa_cudnn" in timed_anchors:
                entry["vs_cudnn"] = entry["ms"] / timed_anchors["sdpa_cudnn"]
    return row


def kernel_level(lengths: list[int], shape: tuple[int, int, int] = DEFAULT_SHAPE,
                 breakdown: bool = False, extra: Extra = NO_EXTRA) -> list[dict]:
    rows, with_eager = [], True
    for L in lengths:
        rows.append({**kernel_row(L, with_eager, shape, breakdown, extra), "shape": list(shape)})
        with_eager = with_eager and "ms" in rows[-1]["eager_entropy"]
        print(json.dumps(rows[-1]), flush=True)
    return rows


def model_level(lengths: list[int], config_name: str, distance_cap: int | None = None) -> list[dict]:
    """model_row at each length for a random-init model of the shape benchmarks/configs/NAME.json (speed does
    not depend on the weights); stops after the first length whose full trace runs out of memory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import workbench

    fields = json.loads((CONFIGS_DIR / f"{config_name}.json").read_text())
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    config.max_position_embeddings = max(config.max_position_embeddings, max(lengths))
    with torch.device("cuda"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.bfloat16).eval()
    subject = workbench.load(model)
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for L in lengths:
        rows.append({**model_row(subject, L, params, distance_cap), "config": config_name})
        print(json.dumps(rows[-1]), flush=True)
        if "error" in rows[-1]["trace_all_stats"]:
            break
    del model, subject
    torch.cuda.empty_cache()
    return rows


def model_row(subject, L: int, params: int, distance_cap: int | None = None) -> dict:
    """Plain sdpa forward against captures of no, the one-pass and all statistics, at context length L."""
    import workbench

    model = subject.model
    ids = torch.randint(0, model.config.vocab_size, (1, L), device="cuda")

    def run(stats=None):
        def forward():
            with torch.no_grad():
                if stats is None:
                    return model(input_ids=ids, logits_to_keep=1, use_cache=False).logits
                with workbench.capture(subject, stats=stats, distance_cap=distance_cap) as cap:
                    model(input_ids=ids, logits_to_keep=1, use_cache=False)
                return cap.statistics(subject.adapter.n_layers)
        return forward

    row = {"L": L, "params": params, "plain_sdpa": measure_forward(run())}
    every = QUERY_STATS + KEY_STATS  # every per-token statistic (the block ones are measured at kernel level)
    for name, stats in (("ours_no_stats", ()), ("ours_query_stats", QUERY_STATS), ("trace_all_stats", every)):
        row[name] = measure_forward(run(stats))
        if "ms" in row["plain_sdpa"] and "ms" in row[name]:
            row[name]["vs_plain"] = row[name]["ms"] / row["plain_sdpa"]["ms"]
    return row


def cell(entry: dict, ratio: str | None = None) -> str:
    if "error" in entry:
        return entry["error"]
    text = f"{entry['ms']:.2f} ms, {entry['peak_gib']:.2f} GiB"
    return text + (f" ({entry[ratio]:.2f}x)" if ratio and ratio in entry else "")


def short(entry: dict, ratio: bool) -> str:
    if "error" in entry:
        return entry["error"].split(":")[0]
    return f"{entry['ms']:.2f}" + (f" ({entry['vs_fastest']:.2f}x)" if ratio else "")


def _tiles(pinned: dict | None) -> str | None:
    """A pinned configuration as WORKBENCH_TRITON_CONFIG writes it (None: autotuned)."""
    keys = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "maxnreg")
    return pinned and ",".join(str(pinned[k]) for k in keys if k in pinned)


def markdown(gpu: str, kernel_rows: list[dict], model_rows: list[dict], pinned: str | None = None,
             pinned_received: str | None = None, gluon: bool = False, gluon_received: bool = False,
             distance_cap: int | None = None) -> str:
    """The result tables; `pinned` / `pinned_received`: the tile configurations every launch of our Triton forward
    and of our `received` pass used (None: autotuned); gluon: causal self-attention took the warp-specialized
    Gluon forward (`workbench.kernels.gluon_attention`), which has fixed tiles, and gluon_received: its `received`
    pass too; distance_cap: the cap the statistics' window_distance took (None: uncapped)."""
    tiles = (f"Our kernels' tiles pinned to {pinned} (BLOCK_M, BLOCK_N, warps, stages: WORKBENCH_TRITON_CONFIG)"
             if pinned else "Our kernels' tiles autotuned")
    if pinned_received != pinned:
        tiles += (f", the received pass's to {pinned_received} (WORKBENCH_TRITON_RECEIVED_CONFIG)" if pinned_received
                  else ", the received pass's autotuned")
    tiles += "."
    if gluon:
        tiles += (" Causal self-attention of a multiple of 128 tokens took the warp-specialized Gluon forward "
                  "(128 x 128 tiles, a producer warp and two consumer warpgroups; WORKBENCH_GLUON=0 turns it off).")
        if gluon_received:
            tiles += (" `received` without block statistics took its warp-specialized Gluon pass "
                      "(WORKBENCH_GLUON_RECEIVED=0 keeps the Triton one).")
    tiles += (f" window_distance capped at {distance_cap} tokens (--distance-cap)." if distance_cap is not None
              else " window_distance uncapped, as `workbench.trace` computes it.")
    lines = [f"# Attention with statistics on {gpu}", "", tiles, ""]
    if kernel_rows:
        heads, kv_heads, head_dim = kernel_rows[0]["shape"]
        blocks = sorted({n for r in kernel_rows for n in r if n.startswith("ours_block_")},
                        key=lambda n: (int(n.rsplit("_", 1)[1]), n))
        sparse = sorted({n for r in kernel_rows for n in r if n.startswith("ours_sparse_")},
                        key=lambda n: -float(n.rsplit("_", 1)[1]))
        ours = OURS + tuple(blocks) + tuple(sparse)
        names = [n for n in ANCHORS + ours if any(n in r for r in kernel_rows)]
        lines += [f"Kernel level: batch 1, {heads} query heads, {kv_heads} key-value heads, head_dim {head_dim}, "
                  "causal, bf16; median ms (ratio to the fastest attention of the row, named last).", "",
                  "| L | " + " | ".join(names) + " | fastest |", "|---" * (len(names) + 2) + "|"]
        for r in kernel_rows:
            cells = [short(r.get(n, {"error": "-"}), n in ours) for n in names]
            lines.append(f"| {r['L']} | " + " | ".join(cells) + f" | {r['fastest']} |")
        breakdown = sorted({n for r in kernel_rows for n in r if n.startswith("ours_only_")})
        if breakdown:
            lines += ["", "One statistic at a time (ms, ratio to the fastest attention):", "",
                      "| L | " + " | ".join(n[len("ours_only_"):] for n in breakdown) + " |",
                      "|---" * (len(breakdown) + 1) + "|"]
            lines += [f"| {r['L']} | " + " | ".join(short(r[n], True) for n in breakdown) + " |" for r in kernel_rows]
    if model_rows:
        lines += [f"Model level: random-init model of the shape of {model_rows[0]['config']} "
                  f"(benchmarks/configs/), {model_rows[0]['params'] / 1e9:.2f}B parameters, bf16, batch 1; "
                  "median time, peak extra memory, (ratio to the plain forward).", "",
                  "| L | plain sdpa forward | ours, no statistics | ours, one-pass statistics | "
                  "all statistics, to host (trace) |", "|---|---|---|---|---|"]
        for r in model_rows:
            lines.append(f"| {r['L']} | {cell(r['plain_sdpa'])} | {cell(r['ours_no_stats'], 'vs_plain')} | "
                         f"{cell(r['ours_query_stats'], 'vs_plain')} | {cell(r['trace_all_stats'], 'vs_plain')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="8192,32768,131072",
                        help="kernel-level context lengths (empty: skip the kernel level)")
    parser.add_argument("--model-lengths", default="1024,4096,16384,32768,65536,131072",
                        help="model-level context lengths (empty: skip the model level)")
    parser.add_argument("--breakdown", action="store_true", help="kernel level: also one statistic at a time")
    parser.add_argument("--shapes", default="32,32,128;32,8,64",
                        help="kernel level: 'query heads,kv heads,head_dim', several separated by ';'")
    parser.add_argument("--block-mass", default="", metavar="SIZES",
                        help="kernel level: also block_mass (and block_max) beside received, in blocks of each size")
    parser.add_argument("--block-keep", default="", metavar="FRACTIONS",
                        help="kernel level: also the one-pass statistics under a random block-sparse edit keeping "
                             "each fraction of the key blocks")
    parser.add_argument("--distance-cap", type=int, default=None, metavar="TOKENS",
                        help="cap window_distance at this many tokens (default: uncapped, as workbench.trace)")
    parser.add_argument("--model-configs", default="llama-1.1b",
                        help="model level: comma-separated names of benchmarks/configs/*.json")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="", help="added to the file names (a partial run, say)")
    parser.add_argument("--compile-only", metavar="SHAPES", help=argparse.SUPPRESS)  # precompile()'s workers
    args = parser.parse_args()
    if args.distance_cap is not None and args.distance_cap < 1:
        parser.error(f"--distance-cap {args.distance_cap}: give a positive number of tokens")
    extra = Extra(tuple(int(x) for x in args.block_mass.split(",") if x),
                  tuple(float(x) for x in args.block_keep.split(",") if x), args.distance_cap)
    if args.compile_only:
        compile_only([tuple(int(x) for x in s.split(",")) for s in args.compile_only.split(";")], extra)
        return
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
    gpu = torch.cuda.get_device_name()
    tag = f"_{args.tag}" if args.tag else ""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"gpu": gpu, "gpus": 1, "torch": torch.__version__, "triton": triton.__version__,
            "flash_attn_4": _version("flash-attn-4"), "triton_config": _tiles(PINNED),
            "triton_received_config": _tiles(PINNED_RECEIVED),
            "gluon_forward": gluon_attention.ALLOWED and gluon_attention.gluon_stats_forward is not None,
            "gluon_received": gluon_attention.RECEIVED_ALLOWED and gluon_attention.gluon_received_pass is not None,
            "distance_cap": args.distance_cap}
    if args.lengths:
        meta["precompile_seconds"] = round(precompile(shapes, extra))
        print(f"precompiled {len(CONFIGS)} configurations in {meta['precompile_seconds']} s", flush=True)
    parts = [("kernel" + ("" if shape == DEFAULT_SHAPE else "_" + "-".join(map(str, shape))), args.lengths,
              lambda ls, shape=shape: kernel_level(ls, shape, args.breakdown, extra)) for shape in shapes]
    parts += [(f"model_{name}", args.model_lengths, lambda ls, name=name: model_level(ls, name, args.distance_cap))
              for name in args.model_configs.split(",")]
    for part, lengths, run in parts:
        if not lengths:
            continue
        start = time.time()
        rows = run([int(x) for x in lengths.split(",")])
        name = f"attention_stats_{part}{tag}_{slug(gpu)}"
        (out / f"{name}.json").write_text(json.dumps({**meta, "seconds": math.ceil(time.time() - start),
                                                      "rows": rows}, indent=1))
        table = markdown(gpu, rows if part.startswith("kernel") else [], rows if part.startswith("model") else [],
                         meta["triton_config"], meta["triton_received_config"], meta["gluon_forward"],
                         meta["gluon_received"], meta["distance_cap"])
        (out / f"{name}.md").write_text(table)
        print(table, flush=True)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
