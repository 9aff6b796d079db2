"""The Gluon forward with its argmax searched (the default) against the packed one (the argmax in the scores' last
bits and the running sums per thread, WORKBENCH_GLUON_FORWARD_PACKED=1; benchmarks/NOTES.md, change 22), on a GPU.

Both run in one process on the same inputs (batch 1, causal, bf16, `triton.testing.do_bench` median), each with
every one-pass statistic and with max_prob and argmax_key alone, beside the fastest attention of the run
(FlashAttention-4 where it is installed, else cuDNN SDPA) and the forward with no statistic but lse. Each row also
gives the largest difference of the packed statistics to the searched ones, and the share of rows whose argmax
agrees (the packed argmax may take another key among scores within 2^-16 of the maximum).

Usage: python benchmarks/forward_packed.py [--shapes 32,8,64;32,32,128] [--lengths 8192,32768] [--tag NAME]
  [--out benchmarks/results]
Writes forward_packed[_<tag>]_<gpu>.json and .md into --out.
"""

from __future__ import annotations

from hardware import gluon_shapes_main
from received_pass import anchored_inputs, bench

from workbench.kernels import QUERY_STATS, gluon_attention
from workbench.kernels.triton_attention import attention

CASES = {"one_pass": QUERY_STATS, "argmax": ("max_prob", "argmax_key")}


def row(shape: tuple[int, int, int], length: int) -> dict:
    """Milliseconds of the anchors, the lse-only forward, and each case searched and packed; the packed
    statistics' largest relative difference to the searched ones."""
    (q, k, v), out = anchored_inputs(shape, length)
    anchor = out.get("fa4", out["cudnn"])
    out["lse_only"] = bench(lambda: attention(q, k, v, stats=("lse",)))
    got = {}
    for packed in (False, True):
        gluon_attention.FORWARD_PACKED = packed
        tag = "packed" if packed else "searched"
        for case, stats in CASES.items():
            out[f"{case}_{tag}"] = bench(lambda: attention(q, k, v, stats=stats))
            out[f"{case}_{tag}_vs_anchor"] = out[f"{case}_{tag}"] / anchor
        got[tag] = attention(q, k, v, stats=QUERY_STATS)[1]
    gluon_attention.FORWARD_PACKED = False
    searched, packed = got["searched"], got["packed"]
    out["argmax_agrees"] = (searched["argmax_key"] == packed["argmax_key"]).float().mean().item()
    out["max_rel_diff"] = {name: ((packed[name] - searched[name]).abs() / searched[name].abs().clamp_min(1e-3))
                           .max().item() for name in searched if name != "argmax_key"}
    return out


def markdown(gpu: str, rows: list[dict]) -> str:
    anchor = "FlashAttention-4" if all("fa4" in r for r in rows) else "cuDNN SDPA"
    lines = [f"# The Gluon forward, argmax searched and packed, {gpu}", "",
             f"ms; in brackets the ratio to {anchor}", "",
             "| shape | L | anchor | lse only | one-pass, searched | one-pass, packed | argmax, searched "
             "| argmax, packed | argmax agrees |", "|---" * 9 + "|"]
    for r in rows:
        cells = [f"{r[key]:.2f} ({r[key + '_vs_anchor']:.2f}x)" for key in
                 ("one_pass_searched", "one_pass_packed", "argmax_searched", "argmax_packed")]
        lines.append(f"| {r['shape']} | {r['L']} | {r.get('fa4', r['cudnn']):.2f} | {r['lse_only']:.2f} | "
                     + " | ".join(cells) + f" | {r['argmax_agrees']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    gluon_shapes_main(__doc__, "forward_packed", row, markdown, gluon_attention.HEAD_DIMS)


if __name__ == "__main__":
    main()
