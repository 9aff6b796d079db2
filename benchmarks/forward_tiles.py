"""The Gluon forward's tiles at head_dim 64, side by side on a GPU: two consumer warpgroups on 128 rows with 128-key
blocks against three on 192 rows with 64-key blocks (FlashAttention-3's tile at head_dim 64), in 2, 3 or 4 stages.

Each tile is timed in one process, on the same inputs (batch 1, causal, bf16, `triton.testing.do_bench` median),
without statistics, with the one-pass statistics and with every statistic (`received` from the Gluon pass), next
to the fastest attention of the run (FlashAttention-4 where it is installed, else cuDNN SDPA) on the same inputs.
Each tile's output and statistics are checked against the first tile's before it is timed.

Usage: python benchmarks/forward_tiles.py [--shapes 32,8,64] [--lengths 8192,32768] [--tag NAME]
  [--out benchmarks/results]
Writes forward_tiles[_<tag>]_<gpu>.json and .md into --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton
from attention_stats import anchors, bf16_inputs
from hardware import write_results

from workbench.kernels import KEY_STATS, QUERY_STATS, gluon_attention
from workbench.kernels.triton_attention import attention

# (consumer warpgroups, keys of a block, stages), as gluon_attention.TILES holds them
TILES = {"2x128-2": (2, 128, 2), "3x64-2": (3, 64, 2), "3x64-3": (3, 64, 3), "3x64-4": (3, 64, 4)}
CASES = {"plain": (), "one_pass": QUERY_STATS, "every": QUERY_STATS + KEY_STATS}


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def row(shape: tuple[int, int, int], length: int) -> dict:
    """Milliseconds of the anchors and of each tile in each case, with its ratio to the fastest anchor."""
    q, k, v = bf16_inputs(length, shape)
    out = {"shape": "x".join(map(str, shape)), "L": length}
    cases = anchors(q, k, v)
    out["cudnn"] = bench(cases["sdpa_cudnn"])
    if "fa4" in cases:
        out["fa4"] = bench(cases["fa4"])
    anchor = out.get("fa4", out["cudnn"])
    first = None
    for name, tile in TILES.items():
        gluon_attention.TILES[shape[2]] = tile
        result = attention(q, k, v, stats=CASES["every"])
        if first is None:
            first = result
        out[f"{name}_max_abs_diff"] = max((a.float() - b.float()).abs().max().item() for a, b in zip(
            (result[0], *result[1].values()), (first[0], *first[1].values())))
        for case, stats in CASES.items():
            out[f"{name}_{case}"] = bench(lambda stats=stats: attention(q, k, v, stats=stats))
            out[f"{name}_{case}_vs_anchor"] = out[f"{name}_{case}"] / anchor
    return out


def markdown(gpu: str, rows: list[dict]) -> str:
    anchor = "FlashAttention-4" if all("fa4" in r for r in rows) else "cuDNN SDPA"
    lines = [f"# The Gluon forward's tiles at head_dim 64, {gpu}", "",
             f"ms (ratio to {anchor}); tiles as consumer warpgroups x keys of a block - stages; no statistics / "
             "one-pass statistics / every statistic", "",
             "| shape | L | anchor | " + " | ".join(TILES) + " |", "|---" * (3 + len(TILES)) + "|"]
    for r in rows:
        cells = [" / ".join(f"{r[f'{name}_{case}']:.2f} ({r[f'{name}_{case}_vs_anchor']:.2f}x)" for case in CASES)
                 for name in TILES]
        lines.append(f"| {r['shape']} | {r['L']} | {r.get('fa4', r['cudnn']):.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="32,8,64", help="heads,kv_heads,64; several with ';'")
    parser.add_argument("--lengths", default="8192,32768")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
    lengths = [int(x) for x in args.lengths.split(",")]
    bad = [s for s in shapes if len(s) != 3 or s[2] != 64] + [n for n in lengths if n % 128]
    if bad:
        parser.error(f"{bad}: shapes are heads,kv_heads,64, lengths multiples of 128")
    rows = []
    for shape in shapes:
        for length in lengths:
            rows.append(row(shape, length))
            print(json.dumps(rows[-1]), flush=True)
    name = "forward_tiles" + (f"_{args.tag}" if args.tag else "")
    write_results(Path(args.out), name, rows, markdown(torch.cuda.get_device_name(), rows))


if __name__ == "__main__":
    main()
