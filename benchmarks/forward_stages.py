"""The Gluon forward's key/value stages and who releases them: each variant against the others, on a GPU, in one
process.

The warp-specialized forward keeps STAGES key and value blocks in shared memory, so the producer warp loads
ahead while the consumers compute; more stages hide more of a load's latency but take shared memory (4 do not
fit beside the query tile at head_dim 128). A consumer frees a stage by an arrival on its barrier: one thread's,
after a barrier across the warpgroup, or each thread's own, with no such barrier but 128 arrivals
(`gluon_attention.RELEASE`). With the stages' barriers in two arrays, the even stages' and the odd ones', and
the key loop taken two blocks at a time (`gluon_attention.STAGE_PAIRS`: always, never, or for the forwards that
compute no statistic but the log-sum-exp), the barrier Triton puts across a warpgroup before each stage's wait
falls every other block. Which variant is fastest depends on what the consumers compute a block, so each is timed
on three paths the default serves: the one-pass statistics with the window distance uncapped (as
`workbench.trace` computes it) and capped at 128 tokens, and the log-sum-exp alone. Rounds run the variants in
alternating order (`triton.testing.do_bench` median, `rep` long enough for at least 8 runs; batch 1, causal,
bf16), and each variant's output and statistics are compared bit for bit with the default's on each path (the
barriers in pairs compile to another instruction schedule, which need not round alike). The anchor is the
fastest attention of the run (FlashAttention-4 where it is installed, else cuDNN SDPA), same inputs.

Usage: python benchmarks/forward_stages.py [--shapes 32,8,64;32,32,128] [--lengths 8192,32768] [--rounds 3]
  [--variants 4_thread_pairs_lse,...] [--tag NAME] [--out benchmarks/results]
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

# (stages, who releases a stage, which forwards take the barriers in pairs, which keep the running sums per thread)
# tried per head_dim: one thread after a warpgroup barrier, or every thread; the pairs at head_dim 64 alone (at 128
# they spill with the statistics, benchmarks/NOTES.md change 27); the sums per thread (`gluon_attention.SUMS_MODES`),
# changes 30-31
VARIANTS = {64: ((2, "warpgroup", "never", "never"), (3, "warpgroup", "never", "never"),
                 (4, "warpgroup", "never", "never"), (3, "thread", "never", "never"), (4, "thread", "never", "never"),
                 (4, "thread", "lse", "never"), (4, "thread", "always", "never"), (4, "thread", "lse", "always"),
                 (4, "thread", "lse", "full")),
            128: ((2, "warpgroup", "never", "never"), (3, "warpgroup", "never", "never"),
                  (2, "thread", "never", "never"), (3, "thread", "never", "never"), (2, "thread", "never", "always"))}
PAIRS_NAMES = {"never": "", "always": "_pairs", "lse": "_pairs_lse"}
PAIRS_LABELS = {"never": "", "always": ", pairs", "lse": ", pairs on the lse alone"}
SUMS_NAMES = {"never": "", "always": "_thread_sums", "full": "_thread_sums_full"}
SUMS_LABELS = {"never": "", "always": ", sums by thread", "full": ", sums by thread where all are kept"}
PATHS = {"one_pass": dict(stats=QUERY_STATS), "capped": dict(stats=QUERY_STATS, distance_cap=128),
         "lse": dict(stats=("lse",))}


def use(head_dim: int, stages: int, release: str, pairs: str, thread_sums: str) -> None:
    """Make the forward compile with `stages` at head_dim, `release` ("thread" or "warpgroup"), the stages'
    barriers in pairs where `pairs` says (one of `gluon_attention.PAIRS_MODES`) and the running sums kept per
    thread where `thread_sums` says (one of `gluon_attention.SUMS_MODES`); the compiled kernels are forgotten."""
    gluon_attention.STAGES = {**gluon_attention.STAGES, head_dim: stages}
    gluon_attention.RELEASE = release
    gluon_attention.STAGE_PAIRS = {**gluon_attention.STAGE_PAIRS, head_dim: pairs}
    gluon_attention.THREAD_SUMS = {**gluon_attention.THREAD_SUMS, head_dim: thread_sums}
    gluon_attention._COMPILES.clear()


def name(variant: tuple[int, str, str, str]) -> str:
    return f"{variant[0]}_{variant[1]}{PAIRS_NAMES[variant[2]]}{SUMS_NAMES[variant[3]]}"


def row(shape: tuple[int, int, int], length: int, rounds: int, only: set[str]) -> dict:
    """Per variant (those named in `only`, or all where it is empty): whether the Gluon forward ran, the paths on
    which it matched the default bit for bit, and the median ms of each path over `rounds`."""
    head_dim = shape[2]
    default = (gluon_attention.STAGES[head_dim], gluon_attention.RELEASE, gluon_attention.STAGE_PAIRS[head_dim],
               gluon_attention.THREAD_SUMS[head_dim])  # what every path runs by default
    q, k, v = bf16_inputs(length, shape)
    cases = anchors(q, k, v)
    anchor = "fa4" if "fa4" in cases else "sdpa_cudnn"
    rep = max(200, int(15 * triton.testing.do_bench(cases[anchor], warmup=5, rep=50)))

    def bench(fn) -> float:
        return triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median")

    out = {"shape": "x".join(map(str, shape)), "L": length, "anchor": anchor, "anchor_ms": bench(cases[anchor]),
           "default": name(default)}
    reference = {path: attention(q, k, v, **kw) for path, kw in PATHS.items()}
    ran = []
    for variant in (v for v in VARIANTS[head_dim] if not only or name(v) in only):
        use(head_dim, *variant)
        got = {path: attention(q, k, v, **kw) for path, kw in PATHS.items()}
        out[f"{name(variant)}_ran"] = all(gluon_attention._COMPILES.values())  # else the Triton forward ran
        if out[f"{name(variant)}_ran"]:
            ran.append(variant)
            out[f"{name(variant)}_same"] = [p for p in PATHS if torch.equal(got[p][0], reference[p][0]) and all(
                torch.equal(got[p][1][s], reference[p][1][s]) for s in reference[p][1])]
        del got
    del reference
    times: dict[str, list[float]] = {}
    for r in range(rounds):
        for variant in (ran if r % 2 == 0 else ran[::-1]):
            use(head_dim, *variant)
            for path, kw in PATHS.items():
                times.setdefault(f"{name(variant)}_{path}", []).append(
                    bench(lambda kw=kw: attention(q, k, v, **kw)))
    use(head_dim, *default)
    out.update({f"{key}_ms": statistics.median(values) for key, values in times.items()})
    out.update({f"{key}_rounds": values for key, values in times.items()})
    return out


def markdown(gpu: str, rows: list[dict]) -> str:
    lines = [f"# The Gluon forward's key/value stages and their release, {gpu}", "",
             "Median ms over the rounds (in brackets the ratio to the run's anchor); capped: window distance capped "
             "at 128 tokens; release: one thread after a barrier across its warpgroup, or every thread on its own; "
             "pairs: the stages' barriers in two arrays, the key loop two blocks at a time; sums by thread: the "
             "running sums and the argmax kept per thread through the key loop (where all are kept: on the "
             "one-pass path alone). "
             "A star marks the variant the default runs; same: the paths whose output and statistics are bit for "
             "bit the default's.", "",
             "| shape | L | anchor | stages, release | one-pass | capped | lse only | same |", "|---" * 8 + "|"]
    for r in rows:
        for variant in (v for v in VARIANTS[int(r["shape"].split("x")[2])] if f"{name(v)}_ran" in r):
            label = f"{variant[0]}, {variant[1]}{PAIRS_LABELS[variant[2]]}{SUMS_LABELS[variant[3]]}"
            if not r[f"{name(variant)}_ran"]:
                lines.append(f"| {r['shape']} | {r['L']} | | {label} | does not compile | | | |")
                continue
            star = "*" if r["default"] == name(variant) else ""
            cells = [f"{ms:.2f}{star} ({ms / r['anchor_ms']:.2f}x)"
                     for ms in (r[f"{name(variant)}_{path}_ms"] for path in PATHS)]
            lines.append(f"| {r['shape']} | {r['L']} | {r['anchor']} {r['anchor_ms']:.2f} | {label} | "
                         + " | ".join(cells) + f" | {', '.join(r[f'{name(variant)}_same']) or 'none'} |")
    return "\n".join(lines) + "\n"


def at_least_one(text: str) -> int:
    """--rounds: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of rounds, at least 1")
    return int(text)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=at_least_one, default=3)
    parser.add_argument("--variants", default="", help="the variants to time, by name (as 4_thread_pairs_lse), "
                        "comma-separated; all by default")


def main() -> None:
    args, shapes, lengths = gluon_command_line(__doc__, VARIANTS, options)
    only = {v for v in args.variants.split(",") if v}
    known = {name(v) for variants in VARIANTS.values() for v in variants}
    if only - known:
        raise SystemExit(f"--variants {args.variants!r}: {sorted(only - known)} unknown; known: {sorted(known)}")
    write_rows(args, "forward_stages", shapes, lengths, lambda shape, length: row(shape, length, args.rounds, only),
               markdown)


if __name__ == "__main__":
    main()
