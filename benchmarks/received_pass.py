"""The `received` pass on its own: our Triton pass against the warp-specialized Gluon pass and its variants, on a GPU.

`received` (the attention each key receives) needs each query's final log-sum-exp, so it takes a second pass
after the forward. Here both passes follow the same Gluon forward with the one-pass statistics, in one process,
on the same inputs (batch 1, causal, bf16, `triton.testing.do_bench` median): the forward alone, then the
forward with `received` from the Triton pass and from the Gluon pass with 2, 3 or 4 query blocks in flight, in
groups of 4 blocks, with 3 in groups of 2, and with two programs a multiprocessor on 64-query blocks, 4 in flight in
groups of 2 (WORKBENCH_GLUON_RECEIVED_STAGES, _GROUP and _PROGRAMS). A pass's time is the
difference to the forward alone. The anchor is the fastest attention of the run (FlashAttention-4 where it is
installed, else cuDNN SDPA), timed on the same inputs.

Usage: python benchmarks/received_pass.py [--shapes 32,8,64;32,32,128] [--lengths 8192,32768] [--tag NAME]
  [--out benchmarks/results]
Writes received_pass[_<tag>]_<gpu>.json and .md into --out, rewritten after each row.
"""

from __future__ import annotations

import triton
from attention_stats import anchors, bf16_inputs
from hardware import gluon_command_line, write_rows

from workbench.kernels import KEY_STATS, QUERY_STATS, gluon_attention
from workbench.kernels.triton_attention import attention

# query blocks in flight, the blocks of a group of the loop (gluon_received's GROUP; the default is 3 in pairs) and
# the programs a multiprocessor (its PROGRAMS)
VARIANTS = {"gluon_2": (2, 4, 1), "gluon_3": (3, 4, 1), "gluon_4": (4, 4, 1), "gluon_3_pairs": (3, 2, 1),
            "gluon_4_pairs_two_programs": (4, 2, 2)}
SETTINGS = ("RECEIVED_STAGES", "RECEIVED_GROUP", "RECEIVED_PROGRAMS")


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def row(shape: tuple[int, int, int], length: int) -> dict:
    """Milliseconds of the anchors, the forward alone and the forward with each received pass; each pass's time."""
    q, k, v = bf16_inputs(length, shape)
    out = {"shape": "x".join(map(str, shape)), "L": length}
    cases = anchors(q, k, v)
    out["cudnn"] = bench(cases["sdpa_cudnn"])
    if "fa4" in cases:
        out["fa4"] = bench(cases["fa4"])
    out["forward"] = bench(lambda: attention(q, k, v, stats=QUERY_STATS))
    every = QUERY_STATS + KEY_STATS
    gluon_attention.RECEIVED_ALLOWED = False  # the Triton pass
    out["triton"] = bench(lambda: attention(q, k, v, stats=every))
    reference = attention(q, k, v, stats=every)[1]["received"]
    gluon_attention.RECEIVED_ALLOWED = True
    default = [getattr(gluon_attention, setting) for setting in SETTINGS]
    for name, values in VARIANTS.items():
        for setting, value in zip(SETTINGS, values, strict=True):
            setattr(gluon_attention, setting, value)
        got = attention(q, k, v, stats=every)[1]["received"]
        out[f"{name}_max_rel_diff"] = ((got - reference).abs() / reference.abs().clamp_min(1e-6)).max().item()
        out[name] = bench(lambda: attention(q, k, v, stats=every))
    for setting, value in zip(SETTINGS, default, strict=True):
        setattr(gluon_attention, setting, value)
    anchor = out.get("fa4", out["cudnn"])
    out["forward_vs_anchor"] = out["forward"] / anchor
    for name in ("triton", *VARIANTS):
        out[f"{name}_pass"] = out[name] - out["forward"]
        out[f"{name}_pass_vs_anchor"] = out[f"{name}_pass"] / anchor
        out[f"{name}_vs_anchor"] = out[name] / anchor
    return out


def markdown(gpu: str, rows: list[dict]) -> str:
    anchor = "FlashAttention-4" if all("fa4" in r for r in rows) else "cuDNN SDPA"
    lines = [f"# The received pass alone, {gpu}", "",
             f"ms; in brackets the forward's ratio to {anchor}, and the pass alone (forward with it less forward "
             "alone) as a ratio to it", "",
             "| shape | L | anchor | forward, one-pass | + Triton pass | "
             + " | ".join(f"+ {name}" for name in VARIANTS) + " |",
             "|---" * (5 + len(VARIANTS)) + "|"]
    for r in rows:
        forwards = [f"{r['forward']:.2f} ({r['forward_vs_anchor']:.2f}x)"]
        cells = [f"{r[name]:.2f} ({r[f'{name}_pass_vs_anchor']:.2f}x)" for name in ("triton", *VARIANTS)]
        lines.append(f"| {r['shape']} | {r['L']} | {r.get('fa4', r['cudnn']):.2f} | " + " | ".join(forwards + cells)
                     + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args, shapes, lengths = gluon_command_line(__doc__, gluon_attention.HEAD_DIMS)
    write_rows(args, "received_pass", shapes, lengths, row, markdown)


if __name__ == "__main__":
    main()
