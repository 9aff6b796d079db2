"""The warp-specialized Gluon forward and `received` pass (`workbench.kernels.gluon_forward`, `gluon_received`) that
causal self-attention takes on Hopper (unless WORKBENCH_GLUON=0, or WORKBENCH_GLUON_RECEIVED=0 for the received pass).

Triton's CPU interpreter does not run Gluon, so on the CPU the kernels are compiled for sm_90 (the forward with
every statistic, and the received pass: their layouts, partitions and barriers must lower), and the dispatch rules
are checked on tensors' layouts. On a Hopper GPU (WORKBENCH_GPU_TESTS=1) `triton_attention.attention` takes them,
and the output and every statistic are held to the reference within the tolerance of tests/kernels/matrix.py, in
bf16 and fp16, for both memory layouts a model's projections give: with the block statistics (the Triton received
pass computes `received` then) and without them (the Gluon received pass does).
"""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton.experimental.gluon")

import matrix  # noqa: E402

from workbench.kernels import (  # noqa: E402
    ALL_STATS,
    BLOCK_STATS,
    gluon_attention,
    gluon_forward,
    triton_attention,
)

GPU = (os.environ.get("WORKBENCH_GPU_TESTS") == "1" and torch.cuda.is_available()
       and torch.cuda.get_device_capability() == (9, 0))
NO_BLOCKS = tuple(name for name in ALL_STATS if name not in BLOCK_STATS)  # `received` from the Gluon pass
RECEIVED = ((3, 2, 1), (3, 4, 1), (4, 2, 2))  # the received pass's stages, groups and programs compiled
# Compiles the Gluon kernels for sm_90 without a GPU (`gluon_sources`), in a process of its own: the suite runs
# Triton's interpreter, whose decorators (Triton's own reductions included, made when Triton is first imported) give
# functions that do not compile. Prints each kernel's warps, whether it uses wgmma, its count of ex2 instructions,
# and whether ptxas (the one Triton compiles sm_90 with) serializes its wgmma (note C7514: an accumulator read
# while its wgmma may be in flight).
COMPILE = """
import sys
from workbench.kernels import gluon_attention, gluon_forward, gluon_sources

kernel, head_dim = sys.argv[1], int(sys.argv[2])  # and the received pass's stages:group:programs, as 3:2:1,...
if kernel == "forward":
    every = set(gluon_forward.FLAG_BITS) - {"stage_pairs", "thread_sums"}  # every statistic, stages freed by every
    pairs = (every | {"stage_pairs"}, {"lse", "thread_release", "stage_pairs"})  # thread, by one; the barriers in
    kinds = (every, every - {"thread_release"}, every | {"thread_sums"}) + (pairs if head_dim == 64 else ())  # pairs
    variants = [{"FLAGS": gluon_forward.flags(wanted, 2), "STAGES": gluon_attention.STAGES[head_dim]}
                for wanted in kinds]
else:
    variants = [dict(zip(("STAGES", "GROUP", "PROGRAMS"), map(int, kind.split(":")), strict=True))
                for kind in sys.argv[3].split(",")]
for constexprs in variants:
    compiled = gluon_sources.compile_for_hopper(kernel, head_dim, constexprs)
    ptx = compiled.asm["ptx"]
    print(compiled.metadata.num_warps, "wgmma" in ptx, ptx.count("ex2.approx"),
          "C7514" in gluon_sources.ptxas_report(ptx))
"""


def use_variant(monkeypatch, variant: str) -> None:
    """The forward's stages freed by every thread ("thread"), by one after a warpgroup barrier ("warpgroup"), or
    by every thread with the stages' barriers in two arrays and the key loop in pairs of blocks ("pairs"), whatever
    the statistics; or freed by every thread with the running sums and the argmax kept per thread ("sums")."""
    monkeypatch.setattr(gluon_attention, "RELEASE", "warpgroup" if variant == "warpgroup" else "thread")
    monkeypatch.setattr(gluon_attention, "STAGE_PAIRS",
                        dict.fromkeys(gluon_attention.HEAD_DIMS, "always" if variant == "pairs" else "never"))
    monkeypatch.setattr(gluon_attention, "THREAD_SUMS",
                        dict.fromkeys(gluon_attention.HEAD_DIMS, "always" if variant == "sums" else "never"))


def compile_for_hopper(kernel: str, head_dim: int) -> list[list[str]]:
    """COMPILE's lines for the Gluon `kernel` ("forward" or "received") at head_dim, split into words."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    received = ",".join(":".join(map(str, kind)) for kind in RECEIVED)
    done = subprocess.run([sys.executable, "-c", COMPILE, kernel, str(head_dim), received],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return [line.split() for line in done.stdout.splitlines() if line.split()[:1] == ["12"]]


@pytest.mark.parametrize("head_dim", [64, 128])
def test_compiles_for_hopper_with_every_statistic(head_dim):
    # two consumer warpgroups and the producer's, whose one warp takes a warpgroup's registers; stages released by
    # every thread and by one, with the sums kept per thread, and at head_dim 64 the stages' barriers in pairs too
    lines = compile_for_hopper("forward", head_dim)
    variants = 5 if head_dim == 64 else 3
    assert [(warps, wgmma) for warps, wgmma, _, _ in lines] == [("12", "True")] * variants
    # no wgmma in flight across the key loop's back edge, so ptxas keeps them async
    assert [serialized for *_, serialized in lines] == ["False"] * variants


@pytest.mark.parametrize("head_dim", [64, 128])
def test_received_pass_compiles_for_hopper(head_dim):
    lines = compile_for_hopper("received", head_dim)
    assert [(warps, wgmma) for warps, wgmma, _, _ in lines] == [("12", "True")] * len(RECEIVED)
    # nothing in flight across the loop's back edge, so ptxas keeps the wgmma asynchronous
    assert [serialized for *_, serialized in lines] == ["False"] * len(RECEIVED)
    # 64 exponentials a thread for each of a consumer's copies of a 128-query block (32 of a 64-query block, with
    # two programs): more than G + 1 copies in groups of G (the diagonal's, the one alone, the group's)
    assert all(int(special) > 2 * (group + 1) * 64 // programs
               for (_, _, special, _), (_, group, programs) in zip(lines, RECEIVED, strict=True))


def test_flags_name_every_statistic_once():
    assert gluon_forward.flags({"lse", "max_prob"}, 1) == 1 | 8 | 2048  # one sink key, above the eleven flags
    assert gluon_forward.flags(set(), 3) >> gluon_forward.SINK_SHIFT.value == 3
    assert gluon_forward.flags({"window_distance", "distance_cap"}, 0) == 16 | 128


def test_stage_pairs_where_no_statistic_but_the_lse(monkeypatch):
    """By default the barriers go in pairs at head_dim 64 for the forwards that compute nothing but the output
    and the log-sum-exp; STAGE_PAIRS is checked, with its value named, before anything compiles."""
    def pairs(names, norm=False, head_dim=64):
        wanted = gluon_attention.forward_flags(names, norm=norm, distance_cap=None, head_dim=head_dim)
        return "stage_pairs" in wanted

    assert pairs(()) and pairs(("lse",))
    assert not pairs(("lse", "entropy")) and not pairs(("max_prob", "argmax_key")) and not pairs(("lse",), norm=True)
    assert not pairs((), head_dim=128)
    monkeypatch.setitem(gluon_attention.STAGE_PAIRS, 64, "always")
    assert pairs(("entropy", "window_distance"))
    monkeypatch.setitem(gluon_attention.STAGES, 64, 3)
    with pytest.raises(ValueError, match=r"STAGE_PAIRS\[64\]='always' needs an even number of stages"):
        pairs(())
    monkeypatch.setitem(gluon_attention.STAGE_PAIRS, 64, "often")
    with pytest.raises(ValueError, match=r"STAGE_PAIRS\[64\]='often': expected one of"):
        pairs(())


def test_thread_sums_where_every_sum_is_kept(monkeypatch):
    """By default the running sums go per thread at head_dim 64 for the forwards that keep the entropy's, the
    uncapped window distance's and the argmax (with or without the received pass after them), and for no smaller
    set; THREAD_SUMS is checked, with its value named, before anything compiles."""
    def sums(names, norm=False, distance_cap=None, head_dim=64):
        wanted = gluon_attention.forward_flags(names, norm=norm, distance_cap=distance_cap, head_dim=head_dim)
        return "thread_sums" in wanted

    every = ("lse", "entropy", "sink_mass", "max_prob", "argmax_key", "window_distance", "self_mass")
    assert sums(every) and sums(every, norm=True) and sums(("entropy", "window_distance", "max_prob"))
    assert not sums(every, distance_cap=128) and not sums(every, head_dim=128)
    assert not any(sums(tuple(name for name in every if name != left)) for left in ("entropy", "window_distance"))
    assert not sums(("entropy", "window_distance")) and not sums(()) and not sums(("lse",))
    monkeypatch.setitem(gluon_attention.THREAD_SUMS, 64, "always")
    assert sums(("lse",)) and sums(every, distance_cap=128)
    monkeypatch.setitem(gluon_attention.THREAD_SUMS, 64, True)
    with pytest.raises(ValueError, match=r"THREAD_SUMS\[64\]=True: expected one of"):
        sums(())


def test_received_pass_settings_are_checked(monkeypatch):
    """The received pass's stages, groups and programs from the environment: whole numbers, at least two stages (a
    consumer holds two blocks' stages at once) and one or two programs, refused with the variable and its value."""
    monkeypatch.setenv("WORKBENCH_GLUON_RECEIVED_GROUP", "4")
    assert gluon_attention._count_setting("WORKBENCH_GLUON_RECEIVED_GROUP", 2, least=1) == 4
    monkeypatch.delenv("WORKBENCH_GLUON_RECEIVED_GROUP")
    assert gluon_attention._count_setting("WORKBENCH_GLUON_RECEIVED_GROUP", 2, least=1) == 2
    monkeypatch.setenv("WORKBENCH_GLUON_RECEIVED_STAGES", "1")
    with pytest.raises(ValueError, match="WORKBENCH_GLUON_RECEIVED_STAGES='1': expected a whole number, at least 2"):
        gluon_attention._count_setting("WORKBENCH_GLUON_RECEIVED_STAGES", 3, least=2)
    monkeypatch.setenv("WORKBENCH_GLUON_RECEIVED_GROUP", "two")
    with pytest.raises(ValueError, match="WORKBENCH_GLUON_RECEIVED_GROUP='two'"):
        gluon_attention._count_setting("WORKBENCH_GLUON_RECEIVED_GROUP", 2, least=1)
    monkeypatch.setenv("WORKBENCH_GLUON_RECEIVED_PROGRAMS", "3")
    with pytest.raises(ValueError, match="PROGRAMS='3': expected a whole number, at least 1 and at most 2"):
        gluon_attention._count_setting("WORKBENCH_GLUON_RECEIVED_PROGRAMS", 1, least=1, most=2)


def test_layouts_the_forward_reads():
    q = torch.randn(2, 4, 256, 64)
    assert gluon_attention._rows_and_columns(q)[1:] == (4 * 256, 256, 0)
    bthd = torch.randn(2, 256, 4, 64).transpose(1, 2)  # what a projection's view and transpose give
    rows, per_batch, per_head, columns = gluon_attention._rows_and_columns(bthd)
    assert rows.shape == (2 * 256, 4 * 64) and (per_batch, per_head, columns) == (256, 0, 64)
    assert torch.equal(rows[256 + 5, 3 * 64:4 * 64], bthd[1, 3, 5])
    assert gluon_attention._rows_and_columns(q[:, :, ::2]) is None
    assert not gluon_attention.applies(q, q, q, causal=True, plain=True, inputs_interpreted=False)  # on the CPU
    assert gluon_attention.ALLOWED == (os.environ.get("WORKBENCH_GLUON") != "0")  # on unless turned off


@pytest.mark.skipif(not GPU, reason="the Gluon forward runs on Hopper GPUs (WORKBENCH_GPU_TESTS=1)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_dim,heads,kv_heads", [(64, 4, 2), (128, 4, 4)], ids=["gqa64", "mha128"])
@pytest.mark.parametrize("transposed", [False, True], ids=["bhld", "blhd"])
@pytest.mark.parametrize("variant", ["thread", "warpgroup", "pairs", "sums"])
def test_gpu_matches_reference(dtype, head_dim, heads, kv_heads, transposed, variant, monkeypatch):
    """Either way of releasing a key/value stage (every thread, or one after a warpgroup barrier), the stages'
    barriers in pairs, and the running sums kept per thread (`use_variant`)."""
    use_variant(monkeypatch, variant)
    q, k, v = matrix.inputs(B=2, H=heads, Hkv=kv_heads, Lq=256, head_dim=head_dim, seed=head_dim + heads,
                            device="cuda")
    if transposed:
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    monkeypatch.setattr(gluon_attention, "ALLOWED", True)
    low = tuple(t.to(dtype) for t in (q, k, v))
    assert gluon_attention.applies(*low, causal=True, plain=True, inputs_interpreted=False)
    matrix.check(triton_attention.attention, q, k, v, dtype=dtype, causal=True, sink_keys=(0, 3))


@pytest.mark.skipif(not GPU, reason="the Gluon kernels run on Hopper GPUs (WORKBENCH_GPU_TESTS=1)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_dim,heads,kv_heads", [(64, 4, 2), (128, 4, 4)], ids=["gqa64", "mha128"])
@pytest.mark.parametrize("transposed", [False, True], ids=["bhld", "blhd"])
@pytest.mark.parametrize("stages,group,programs", [(2, 4, 1), (3, 4, 1), (4, 4, 1), (3, 2, 1), (4, 2, 2)],
                         ids=["2-fours", "3-fours", "4-fours", "3-pairs", "4-pairs-two-programs"])
def test_gpu_received_pass(dtype, head_dim, heads, kv_heads, transposed, stages, group, programs, monkeypatch):
    """Without block statistics `received` comes from the Gluon pass, whose key blocks see 1 to 8 query blocks of
    128 (in groups of G: up to G - 1 blocks alone, none, one or two groups after them), or 2 to 16 of 64 with two
    programs a multiprocessor (the first two meet the diagonal)."""
    q, k, v = matrix.inputs(B=2, H=heads, Hkv=kv_heads, Lq=1024, head_dim=head_dim, seed=head_dim + 3,
                            device="cuda")
    if transposed:
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    monkeypatch.setattr(gluon_attention, "ALLOWED", True)
    monkeypatch.setattr(gluon_attention, "RECEIVED_ALLOWED", True)
    monkeypatch.setattr(gluon_attention, "RECEIVED_STAGES", stages)
    monkeypatch.setattr(gluon_attention, "RECEIVED_GROUP", group)
    monkeypatch.setattr(gluon_attention, "RECEIVED_PROGRAMS", programs)
    matrix.check(triton_attention.attention, q, k, v, dtype=dtype, stats=NO_BLOCKS, causal=True, sink_keys=(0, 3))
    assert gluon_attention._COMPILES[("received pass", stages, group, programs, dtype, head_dim)] is True


@pytest.mark.skipif(not GPU, reason="the Gluon forward runs on Hopper GPUs (WORKBENCH_GPU_TESTS=1)")
@pytest.mark.parametrize("stats", [ALL_STATS, NO_BLOCKS], ids=["every", "no_blocks"])
@pytest.mark.parametrize("variant", ["thread", "pairs", "sums"])
def test_gpu_uncapped_distance_and_long_rows(stats, variant, monkeypatch):
    """Peaked rows of 1,024 keys: many p far below 2^-126; with the stages' barriers in pairs, programs of 1 to 8
    key blocks (diagonals of both parities) take pairs, and an even last block alone where one is left."""
    monkeypatch.setattr(gluon_attention, "ALLOWED", True)
    use_variant(monkeypatch, variant)
    monkeypatch.setattr(gluon_attention, "RECEIVED_ALLOWED", True)
    q, k, v = matrix.inputs(B=1, H=2, Hkv=1, Lq=1024, head_dim=64, seed=5, peak=4.0, device="cuda")
    matrix.check(triton_attention.attention, q, k, v, dtype=torch.bfloat16, stats=stats, causal=True)


@pytest.mark.skipif(not GPU, reason="the Gluon forward runs on Hopper GPUs (WORKBENCH_GPU_TESTS=1)")
@pytest.mark.parametrize("stats", [(), ("lse",)], ids=["none", "lse"])
@pytest.mark.parametrize("head_dim,heads,kv_heads", [(64, 4, 2), (128, 4, 4)], ids=["gqa64", "mha128"])
def test_gpu_output_and_lse_alone(stats, head_dim, heads, kv_heads, monkeypatch):
    """The forwards that compute nothing but the output and the log-sum-exp, as the defaults run them (the
    barriers in pairs at head_dim 64), over programs of 1 to 8 key blocks."""
    monkeypatch.setattr(gluon_attention, "ALLOWED", True)
    q, k, v = matrix.inputs(B=1, H=heads, Hkv=kv_heads, Lq=1024, head_dim=head_dim, seed=11, device="cuda")
    matrix.check(triton_attention.attention, q, k, v, dtype=torch.bfloat16, stats=stats, causal=True)
    wanted = gluon_attention.forward_flags(stats, norm=False, distance_cap=None, head_dim=head_dim)
    assert ("stage_pairs" in wanted) == (head_dim == 64)
    assert gluon_attention._COMPILES[("forward", gluon_forward.flags(wanted, 1), torch.bfloat16, head_dim)] is True


@pytest.mark.skipif(not GPU, reason="the Gluon forward runs on Hopper GPUs (WORKBENCH_GPU_TESTS=1)")
def test_gpu_head_dim_128_far_keys_and_a_late_sink(monkeypatch):
    """Sixteen key blocks per row at head_dim 128, and a sink key that early rows do not see."""
    monkeypatch.setattr(gluon_attention, "ALLOWED", True)
    q, k, v = matrix.inputs(B=1, H=2, Hkv=2, Lq=2048, head_dim=128, seed=7, device="cuda")
    matrix.check(triton_attention.attention, q, k, v, dtype=torch.bfloat16, causal=True, sink_keys=(0, 700))


@pytest.mark.skipif(not GPU, reason="the Gluon forward runs on Hopper GPUs (WORKBENCH_GPU_TESTS=1)")
@pytest.mark.parametrize("length,head_dim,cap", [(256, 64, 100), (2048, 64, 128), (2048, 128, 300), (4096, 64, 1000)])
@pytest.mark.parametrize("variant", ["thread", "warpgroup", "pairs", "sums"])
def test_gpu_capped_distance(length, head_dim, cap, variant, monkeypatch):
    """A capped window distance: key blocks wholly beyond the cap, across it and within it, for rows of both
    consumers (caps below, at and above a block of 128 keys), stages released either way or their barriers in
    pairs (whose loops take a range's odd first block and even last one alone)."""
    monkeypatch.setattr(gluon_attention, "ALLOWED", True)
    use_variant(monkeypatch, variant)
    q, k, v = matrix.inputs(B=1, H=2, Hkv=1, Lq=length, head_dim=head_dim, seed=length + head_dim, device="cuda")
    matrix.check(triton_attention.attention, q, k, v, dtype=torch.bfloat16, causal=True, sink_keys=(0, 3),
                 distance_cap=cap)


@pytest.mark.skipif(not GPU, reason="the Gluon forward runs on Hopper GPUs (WORKBENCH_GPU_TESTS=1)")
@pytest.mark.parametrize("variant", ["thread", "sums"])
def test_gpu_argmax_takes_the_first_of_tied_keys(variant, monkeypatch):
    """Exact ties go to the first key, as in the reference: a head whose queries are 0 (every score 0), and one
    whose queries all point at key 5, repeated at key 9 (another thread's column of the same block), key 20 (the
    same thread's) and key 300 (a later block)."""
    monkeypatch.setattr(gluon_attention, "ALLOWED", True)
    use_variant(monkeypatch, variant)
    q, k, v = (t.bfloat16() for t in matrix.inputs(B=1, H=2, Hkv=2, Lq=512, head_dim=64, seed=9, device="cuda"))
    k[:, 1, [9, 20, 300]] = k[:, 1, 5].clone()
    q[:, 0] = 0
    q[:, 1] = 2 * k[:, 1, 5]
    assert gluon_attention.applies(q, k, v, causal=True, plain=True, inputs_interpreted=False)
    _, stats = triton_attention.attention(q, k, v, causal=True, stats=("max_prob", "argmax_key"))
    rows = torch.arange(512, device="cuda")
    assert torch.equal(stats["argmax_key"][0, 0], torch.zeros_like(rows))
    torch.testing.assert_close(stats["max_prob"][0, 0], 1 / (rows + 1.0))
    assert torch.equal(stats["argmax_key"][0, 1, 5:], torch.full_like(rows[5:], 5))


@pytest.mark.skipif(not GPU, reason="the Gluon forward runs on Hopper GPUs (WORKBENCH_GPU_TESTS=1)")
def test_gpu_real_attention_inputs_in_bf16(monkeypatch):
    """q, k, v captured from a trained model (1,024 tokens, head_dim 64), in bf16, against the float64 brute force,
    with `received` from either pass."""
    monkeypatch.setattr(gluon_attention, "ALLOWED", True)
    monkeypatch.setattr(gluon_attention, "RECEIVED_ALLOWED", True)
    for q, k, v in matrix.real_attention_inputs("cuda"):
        assert gluon_attention.applies(*(t.bfloat16() for t in (q, k, v)), causal=True, plain=True,
                                       inputs_interpreted=False)
        for stats in (ALL_STATS, NO_BLOCKS):  # `received` from the Triton pass, then from the Gluon one
            matrix.check(triton_attention.attention, q, k, v, dtype=torch.bfloat16, stats=stats, causal=True)


def test_a_triton_that_cannot_compile_it_falls_back_once(monkeypatch):
    """A first call whose compile fails writes nothing and says so once; the launch is not tried again, and a
    specialization that compiles launches from then on."""
    calls = []

    class Kernel:
        def __init__(self, error):
            self.error = error

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                calls.append(kwargs["FLAGS"])
                if self.error:
                    raise RuntimeError("PassManager::run failed")
            return run

    monkeypatch.setattr(gluon_attention, "_COMPILES", {})
    q = torch.randn(1, 2, 128, 64, dtype=torch.bfloat16)
    views = (gluon_attention._rows_and_columns(q),) * 3
    res = {"entropy": torch.full((1, 2, 128), -1.0)}
    run = lambda: gluon_attention.forward(views, q.shape, 2, torch.empty_like(q), res, None,  # noqa: E731
                                          scale=0.125, sink_positions=torch.zeros(1, dtype=torch.int32),
                                          distance_cap=None)
    monkeypatch.setattr(gluon_attention, "gluon_stats_forward", Kernel(error=True))
    with pytest.warns(RuntimeWarning, match="PassManager::run failed"):
        assert run() is False
    assert run() is False and len(calls) == 1 and bool((res["entropy"] == -1).all())
    monkeypatch.setattr(gluon_attention, "_COMPILES", {})
    monkeypatch.setattr(gluon_attention, "gluon_stats_forward", Kernel(error=False))
    assert run() is True and run() is True and len(calls) == 3
