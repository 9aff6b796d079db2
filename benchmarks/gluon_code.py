"""The Gluon forward's compiled key loops, per statistics path and barrier variant, for Hopper, without a GPU.

What the timings of `forward_stages.py` are read against (benchmarks/NOTES.md, changes 27-29): Triton's
shared-memory analysis puts a barrier across the consumer warpgroup (SASS `BAR.SYNC 0x2, 0x80`) between two waits
on one array of mbarriers, and the variants trade those barriers against the loop's code size. Each kernel is
compiled for sm_90a by Triton's own ptxas (`workbench.kernels.gluon_sources`; use the Triton version of the GPU
machine, since the code differs between versions), its SASS read by Triton's cuobjdump (`hardware.cuobjdump`).
A loop is a conditional backward branch; the key loop is the first innermost loop that holds the most wgmma
(HGMMA): the first consumer's loop over its full key blocks (under a distance cap, over those beyond the cap).
Its cycles are the sum of the stall counts ptxas writes into each instruction's control bits (bits 105-108 of
the 128-bit word on Volta to Hopper): how long one warp alone waits between issues where ptxas knows the wait
(fixed latencies and its model of the pipes' rates), not the waits on variable-latency results (wgmma,
exponentials, shuffles, memory) or on other warps. Nothing is timed.

Besides the paths, --sets compiles sets of statistics of their own (uncapped), each a path named by its statistics
joined with "+" (max_prob stands for the argmax too): which sets a variant shortens (NOTES.md, change 31).

Usage: python benchmarks/gluon_code.py [--head-dims 64] [--paths none,lse,one_pass,capped]
  [--sets "entropy;entropy,window_distance;..."] [--variants block,pairs,thread_sums] [--tag NAME]
  [--out benchmarks/results]
Writes gluon_code_sm90a_triton-<version>[_<tag>].json and .md into --out (the version's dots as dashes).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import triton
from hardware import cuobjdump, slug

from workbench.atomic import replace_file
from workbench.kernels import QUERY_STATS, gluon_attention, gluon_forward, gluon_sources

PATHS = {"none": set(), "lse": {"lse"}, "one_pass": set(QUERY_STATS), "capped": set(QUERY_STATS) | {"distance_cap"}}
VARIANTS = {"block": set(), "pairs": {"stage_pairs"}, "thread_sums": {"thread_sums"}}
WARPGROUP_BARRIER = re.compile(r"BAR\.SYNC\S* 0x[0-9a-f]+, 0x80\b")  # a named barrier of 128 threads


@dataclass
class Loop:
    start: int
    end: int  # the backward branch's address
    instructions: int
    hgmma: int
    barriers: int
    cycles: int  # ptxas's stall counts, summed
    shuffles: int

    @property
    def kib(self) -> float:
        return (self.end - self.start + 16) / 1024


def loops(sass: str) -> list[Loop]:
    """Every conditional backward branch of `sass` as a loop from its target to the branch. (The unconditional
    ones return from a wait's retry, which ptxas places after the kernel's code, or to the partitions' dispatch.)"""
    code = [(int(a, 16), text, (int(high, 16) >> 41) & 0xF) for a, text, high in re.findall(
        r"/\*([0-9a-f]{4,})\*/\s+([^;]*);\s*/\* 0x[0-9a-f]{16} \*/\s*/\* (0x[0-9a-f]{16}) \*/", sass)]
    found = []
    for address, text, _ in code:
        target = re.search(r"^@!?U?P\d+\s+BRA\b.*?0x([0-9a-f]+)", text.strip())
        if target and int(target.group(1), 16) < address:
            start = int(target.group(1), 16)
            body = [(t, stall) for a, t, stall in code if start <= a <= address]
            found.append(Loop(start, address, len(body), sum("HGMMA" in t for t, _ in body),
                              sum(bool(WARPGROUP_BARRIER.search(t)) for t, _ in body),
                              sum(stall for _, stall in body), sum("SHFL" in t for t, _ in body)))
    return found


def key_loop(found: list[Loop]) -> Loop | None:
    """The key loop (the module's docstring) of `loops`, or None where no loop holds a wgmma."""
    inner = [lp for lp in found if lp.hgmma and not any(
        o is not lp and o.hgmma and lp.start <= o.start and o.end <= lp.end for o in found)]
    return max(inner, key=lambda lp: (lp.hgmma, -lp.start), default=None)


def measure(head_dim: int, path: str, stats: set[str], variant: str) -> dict:
    """Registers, spilled bytes and the key loop of the forward at head_dim computing `stats` (named `path`) with
    `variant`, its stages freed by every thread (the default)."""
    wanted = stats | VARIANTS[variant] | {"thread_release"}
    compiled = gluon_sources.compile_for_hopper(
        "forward", head_dim, {"FLAGS": gluon_forward.flags(wanted, 1), "STAGES": gluon_attention.STAGES[head_dim]})
    report = gluon_sources.ptxas_report(compiled.asm["ptx"])
    spilled = sum(int(n) for n in re.findall(r"(\d+) bytes spill stores", report))
    registers = max(int(n) for n in re.findall(r"Used (\d+) registers", report))
    key = key_loop(loops(cuobjdump(compiled.asm["cubin"], "-sass")))
    return {"head_dim": head_dim, "path": path, "variant": variant, "registers": registers, "spill_bytes": spilled,
            "key_loop": key and {**asdict(key), "kib": key.kib}}


def loop_cell(loop: dict | None) -> str:
    if loop is None:
        return "-"
    barriers = f"{loop['barriers']} barrier" + ("" if loop["barriers"] == 1 else "s")
    return (f"{loop['instructions']} ({loop['kib']:.1f} KiB), {loop['cycles']} cycles, {loop['hgmma']} wgmma, "
            f"{loop['shuffles']} shuffles, {barriers}")


def markdown(rows: list[dict]) -> str:
    lines = [f"# The Gluon forward's key loops, sm_90a, Triton {triton.__version__}", "",
             "Compiled without a GPU (`python benchmarks/gluon_code.py`); stages freed by every thread. block: one "
             "key block an iteration; pairs: the stages' barriers in two arrays, two blocks an iteration; "
             "thread_sums: one block an iteration, the running sums and the argmax kept per thread. Key loop: "
             "instructions (code size), cycles (ptxas's stall counts, summed: the module's docstring), wgmma, "
             "shuffles, warpgroup barriers.", "",
             "| head_dim | path | variant | registers | spilled | key loop |", "|---" * 6 + "|"]
    for r in rows:
        lines.append(f"| {r['head_dim']} | {r['path']} | {r['variant']} | {r['registers']} | {r['spill_bytes']} B | "
                     f"{loop_cell(r['key_loop'])} |")
    return "\n".join(lines) + "\n"


def names(text: str, known: dict | tuple, option: str) -> list[str]:
    """A comma-separated list of names from `known`, or argparse's error naming the unknown ones."""
    chosen = [x for x in text.split(",") if x]
    unknown = [x for x in chosen if x not in known]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"{option}: unknown {unknown or text!r}; known: {', '.join(known)}")
    return chosen


def statistic_sets(text: str) -> dict[str, set[str]]:
    """Semicolon-separated sets of QUERY_STATS, each comma-separated, by their names joined with "+"."""
    return {"+".join(chosen): set(chosen) for chosen in (names(part, QUERY_STATS, "--sets")
                                                          for part in text.split(";") if part)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dims", type=lambda t: [int(x) for x in names(t, ("64", "128"), "--head-dims")],
                        default=[64])
    parser.add_argument("--paths", type=lambda t: names(t, PATHS, "--paths"),
                        help="default: every path, none where --sets is given")
    parser.add_argument("--sets", type=statistic_sets, default={}, help="sets of statistics compiled as paths")
    parser.add_argument("--variants", type=lambda t: names(t, VARIANTS, "--variants"), default=list(VARIANTS))
    parser.add_argument("--tag", default="", help="added to the file names")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    paths = {path: PATHS[path] for path in (args.paths or ([] if args.sets else PATHS))} | args.sets
    rows = []
    for head_dim in args.head_dims:
        for path, stats in paths.items():
            for variant in args.variants:
                rows.append(measure(head_dim, path, stats, variant))
                print(json.dumps(rows[-1]), flush=True)
    stem = f"gluon_code_sm90a_{slug('triton ' + triton.__version__)}" + (f"_{args.tag}" if args.tag else "")
    replace_file(args.out / f"{stem}.json", lambda tmp: tmp.write_text(json.dumps(rows, indent=1) + "\n"))
    replace_file(args.out / f"{stem}.md", lambda tmp: tmp.write_text(markdown(rows)))
    print(markdown(rows))
    print(f"wrote {args.out / stem}.json and .md")


if __name__ == "__main__":
    main()
