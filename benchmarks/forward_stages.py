"""The Gluon forward's key/value stages: each count against the others, on a GPU, in one process.

The warp-specialized forward keeps STAGES key and value blocks in shared memory, so the producer warp loads
ahead while the consumers compute; more stages hide more of a load's latency but take shared memory (4 do not
fit beside the query tile at head_dim 128). Which count is fastest depends on what the consumers compute a
block, so each is timed on three paths the default serves: the one-pass statistics with the window distance
uncapped (as `workbench.trace` computes it) and capped at 128 tokens, and the log-sum-exp alone. Rounds run the
counts in alternating order (`triton.testing.do_bench` median, `rep` long enough for at least 8 runs; batch 1,
causal, bf16), and every count's output and statistics are compared bit for bit with the default's. The anchor
is the fastest attention of the run (FlashAttention-4 where it is installed, else cuDNN SDPA), same inputs.

Usage: python benchmarks/forward_stages.py [--shapes 32,8,64;32,32,128] [--lengths 8192,32768] [--rounds 3]
  [--tag NAME] [--out benchmarks/results]
Writes forward_stages[_<tag>]_<gpu>.json and .md into --out, rewritten after each row.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import triton
from attention_stats import anchors, bf16_inputs
from hardware import gluon_command_line, write_rows

from workbench.kernels import QUERY_STATS, gluon_attention
from workbench.kernels.triton_attention import attention

COUNTS = {64: (2, 3, 4), 128: (2, 3)}  # stage counts tried per head_dim
PATHS = {"one_pass": dict(stats=QUERY_STATS), "capped": dict(stats=QUERY_STATS, distance_cap=128),
         "lse": dict(stats=("lse",))}


def use(head_dim: int, stages: int) -> None:
    """Make the forward compile with `stages` at head_dim (the compiled kernels are forgotten)."""
    gluon_attention.STAGES = {**gluon_attention.STAGES, head_dim: stages}
    gluon_attention._COMPILES.clear()


def row(shape: tuple[int, int, int], length: int, rounds: int) -> dict:
    """Per stage count: whether the Gluon forward ran and matched the default bit for bit, and the median ms of
    each path over `rounds`."""
    head_dim = shape[2]
    default = gluon_attention.STAGES[head_dim]
    q, k, v = bf16_inputs(length, shape)
    cases = anchors(q, k, v)
    anchor = "fa4" if "fa4" in cases else "sdpa_cudnn"
    rep = max(200, int(15 * triton.testing.do_bench(cases[anchor], warmup=5, rep=50)))

    def bench(fn) -> float:
        return triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median")

    out = {"shape": "x".join(map(str, shape)), "L": length, "default": default, "anchor": anchor,
           "anchor_ms": bench(cases[anchor])}
    use(head_dim, default)
    reference = {name: attention(q, k, v, **kw) for name, kw in PATHS.items()}
    ran = {default: all(gluon_attention._COMPILES.values())}  # else it did not compile and the Triton forward ran
    for stages in COUNTS[head_dim]:
        if stages == default:
            continue
        use(head_dim, stages)
        got = {name: attention(q, k, v, **kw) for name, kw in PATHS.items()}
        ran[stages] = all(gluon_attention._COMPILES.values())
        if ran[stages]:
            out[f"{stages}_same"] = all(torch.equal(got[n][0], reference[n][0]) and all(
                torch.equal(got[n][1][s], reference[n][1][s]) for s in reference[n][1]) for n in PATHS)
        del got
    del reference
    out.update({f"{stages}_ran": compiled for stages, compiled in ran.items()})
    counts = [stages for stages in COUNTS[head_dim] if ran[stages]]
    times: dict[str, list[float]] = {}
    for r in range(rounds):
        for stages in (counts if r % 2 == 0 else counts[::-1]):
            use(head_dim, stages)
            for name, kw in PATHS.items():
                times.setdefault(f"{stages}_{name}", []).append(bench(lambda kw=kw: attention(q, k, v, **kw)))
    use(head_dim, default)
    out.update({f"{key}_ms": statistics.median(values) for key, values in times.items()})
    out.update({f"{key}_rounds": values for key, values in times.items()})
    return out


def markdown(gpu: str, rows: list[dict]) -> str:
    lines = [f"# The Gluon forward's key/value stages, {gpu}", "",
             "Median ms over the rounds (in brackets the ratio to the run's anchor); capped: window distance capped "
             "at 128 tokens. Same: output and statistics bit for bit those of the default count (the reference).", "",
             "| shape | L | anchor | stages | one-pass | capped | lse only | same |", "|---" * 8 + "|"]
    for r in rows:
        for stages in COUNTS[int(r["shape"].split("x")[2])]:
            mark = " (default)" if stages == r["default"] else ""
            if not r[f"{stages}_ran"]:
                lines.append(f"| {r['shape']} | {r['L']} | | {stages}{mark} | does not compile | | | |")
                continue
            cells = [f"{r[f'{stages}_{p}_ms']:.2f} ({r[f'{stages}_{p}_ms'] / r['anchor_ms']:.2f}x)" for p in PATHS]
            lines.append(f"| {r['shape']} | {r['L']} | {r['anchor']} {r['anchor_ms']:.2f} | {stages}{mark} | "
                         + " | ".join(cells) + f" | {'reference' if mark else r[f'{stages}_same']} |")
    return "\n".join(lines) + "\n"


def at_least_one(text: str) -> int:
    """--rounds: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of rounds, at least 1")
    return int(text)


def main() -> None:
    args, shapes, lengths = gluon_command_line(
        __doc__, COUNTS, lambda parser: parser.add_argument("--rounds", type=at_least_one, default=3))
    write_rows(args, "forward_stages", shapes, lengths, lambda shape, length: row(shape, length, args.rounds),
               markdown)


if __name__ == "__main__":
    main()
