"""When and how `workbench.kernels.triton_attention.attention` runs the warp-specialized Gluon kernels instead of
its Triton ones (WORKBENCH_GLUON=0 keeps the Triton ones): the forward (`workbench.kernels.gluon_forward`) and,
after it, the `received` pass (`workbench.kernels.gluon_received`; WORKBENCH_GLUON_RECEIVED=0 keeps the Triton one).

What the forward costs against FlashAttention-4 and cuDNN SDPA on an H100 is the README's kernel table
(benchmarks/attention_stats.py; benchmarks/NOTES.md says what limits it). On an H100, at 32k and head_dim 64 / 128,
the forward with the Gluon received pass takes about 19.5 / 25.5 ms, with the Triton pass 20.7 / 29.6 (medians of
four runs, NOTES.md change 19).
The forward takes the calls of a traced causal self-attention on a Hopper GPU (compute capability 9.0): bf16 or
fp16, head_dim 64 or 128, as many queries as keys and a multiple of 128 of them, no key padding, window, softcap,
learned sink or edit, and q, k, v each laid out as [batch, heads, length, dim] or [batch, length, heads, dim] (what
a model's projections give, transposed or not; k and v alike). Every per-query statistic is computed
(learned_sink_mass is 0 without learned sinks). `received` then takes the Gluon received pass from the row
normalisers this forward stores, or, where a block statistic is asked too, the Triton received pass, which folds the
block statistics in.
"""

import os
import warnings
from collections.abc import Callable, Collection

import torch
import triton

try:  # Gluon, Triton's explicit layout and warp-specialization language (checked with Triton 3.6 and 3.9)
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from workbench.kernels.gluon_forward import flags, gluon_stats_forward
    from workbench.kernels.gluon_received import BLOCK_QUERIES, C_LAYOUT, gluon_received_pass, launch_options
except (ImportError, AttributeError):  # a Triton without (this) Gluon: the Triton kernels run everywhere
    gluon_stats_forward = gluon_received_pass = None


def _count_setting(variable: str, default: int, least: int, most: int | None = None) -> int:
    """The whole number in the environment variable `variable` (default when unset), at least `least` and at most
    `most` where given; a ValueError naming the variable and its value otherwise, at import, before any kernel is
    compiled."""
    text = os.environ.get(variable, str(default))
    if not text.strip().isdigit() or int(text) < least or (most is not None and int(text) > most):
        raise ValueError(f"{variable}={text!r}: expected a whole number, at least {least}"
                         + (f" and at most {most}" if most is not None else ""))
    return int(text)


ALLOWED = os.environ.get("WORKBENCH_GLUON", "1") != "0"
RECEIVED_ALLOWED = ALLOWED and os.environ.get("WORKBENCH_GLUON_RECEIVED", "1") != "0"
BLOCK_N = 128
# the forward's key/value stages per head_dim, and who frees a stage: every consumer thread on its own (2 x 128
# arrivals, no barrier) or one thread after a barrier across its warpgroup. At 64, four stages freed by every thread
# took 3-7% off the uncapped one-pass statistics against three freed after the barrier, and were as fast capped and
# on the lse alone (an H100, three processes); with three stages every thread's release cost 2-3% there. At 128 it
# took 1-5% off; 3 stages were no faster than 2, 4 do not fit in shared memory (benchmarks/forward_stages.py;
# NOTES.md, changes 14, 23-26). RELEASE "warpgroup" is for benchmarks/forward_stages.py
STAGES = {64: 4, 128: 2}
RELEASE = "thread"
# per head_dim, which forwards take the stages' barriers in two arrays (even and odd stages) with the key loop two
# blocks at a time, so that the barrier Triton puts across the warpgroup before a stage's wait falls every other
# block (`gluon_forward._stage_barriers`): "lse" those that compute no statistic but the log-sum-exp, "always" or
# "never". At 64 it took 7% off the lse alone and made the one-pass statistics 25-48% slower (an H100, one
# process); at 128 it spills with the statistics (benchmarks/forward_stages.py; NOTES.md, changes 27-28)
STAGE_PAIRS = {64: "lse", 128: "never"}
PAIRS_MODES = ("lse", "always", "never")
# per head_dim, which forwards keep each thread's part of the running sums, the argmax and its maximum through the
# key loop, joined once before the diagonal block (`gluon_forward._meet`), instead of whole rows each block: no
# shuffles across a quad for them in the loop (FlashAttention-3 keeps its row sum so). "full": those that keep every
# sum and the argmax, with the window distance uncapped (FULL_SUMS, the one-pass set `workbench.trace` computes);
# "always" or "never". At 64 it took 1-4% off the uncapped one-pass statistics and made the capped ones 7-12% and
# the lse alone 2-8% slower (an H100, one process); compiled, ptxas's schedule of the key loop shortens only where
# the loop keeps all three sums and the argmax, and lengthens for every smaller set (benchmarks/forward_stages.py,
# benchmarks/gluon_code.py; NOTES.md changes 30-31); "full" is that kernel on that path alone. 128: not yet timed
THREAD_SUMS = {64: "full", 128: "never"}
SUMS_MODES = ("full", "always", "never")
FULL_SUMS = frozenset({"entropy", "window_distance", "max_prob"})
# query blocks in flight, and of a group of the received pass's loop: 3 in flight in pairs measured best on an H100,
# as fast as groups of 4 at head_dim 64 and faster at 128 (benchmarks/NOTES.md, change 19). In groups of 2 or more a
# consumer holds two blocks' stages at once, so one stage would never free the next block's
RECEIVED_STAGES = _count_setting("WORKBENCH_GLUON_RECEIVED_STAGES", 3, least=2)
RECEIVED_GROUP = _count_setting("WORKBENCH_GLUON_RECEIVED_GROUP", 2, least=1)
# the received pass's programs a multiprocessor: 1, on 128-query blocks, or 2, on 64-query blocks with the
# registers capped (`gluon_received.LAUNCH_REGISTERS`), so that each scheduler has four consumer warps to switch
# between instead of two; compiled for the benchmarks (benchmarks/NOTES.md change 33), not yet timed
RECEIVED_PROGRAMS = _count_setting("WORKBENCH_GLUON_RECEIVED_PROGRAMS", 1, least=1, most=2)
HEAD_DIMS = (64, 128)
LOG2E = 1.4426950408889634


def _rows_and_columns(t: torch.Tensor) -> tuple[torch.Tensor, int, int, int] | None:
    """t [B, H, L, D] as a 2-D [rows, columns] view with (rows per batch, rows per head, columns per head), or None
    when its memory is neither [B, H, L, D] nor [B, L, H, D] contiguous."""
    batch, heads, length, dim = t.shape
    if t.is_contiguous():
        return t.view(batch * heads * length, dim), heads * length, length, 0
    if t.transpose(1, 2).is_contiguous():
        return t.transpose(1, 2).reshape(batch * length, heads * dim), length, 0, dim
    return None


Views = tuple[tuple[torch.Tensor, int, int, int], ...]  # q's, k's and v's `_rows_and_columns`


def applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, plain: bool,
            inputs_interpreted: bool) -> Views | None:
    """The 2-D views of q, k and v that the Gluon forward reads when this call takes it, else None. plain: no key
    padding, window, softcap, learned sink or edit; inputs_interpreted: the kernels run in Triton's CPU
    interpreter."""
    if (gluon_stats_forward is None or not ALLOWED or inputs_interpreted or not plain or not causal
            or not q.is_cuda):
        return None
    if torch.cuda.get_device_capability(q.device) != (9, 0):
        return None
    length, dim = q.shape[2], q.shape[3]
    if not (q.dtype in (torch.bfloat16, torch.float16) and k.dtype == q.dtype and v.dtype == q.dtype
            and dim in HEAD_DIMS and v.shape[-1] == dim and k.shape[2] == length and length % 128 == 0):
        return None
    views = tuple(_rows_and_columns(t) for t in (q, k, v))
    if any(view is None for view in views) or views[1][1:] != views[2][1:]:
        return None
    return views


_COMPILES: dict[tuple, bool] = {}  # (kernel, its specialization): whether this Triton ran it


def _launch(key: tuple, launch: Callable[[], None]) -> bool:
    """Run launch() (which builds its descriptors and launches the kernel of `key`) and True; False, without calling
    it again, where this Triton failed to compile or load that kernel (a Gluon other than the one it is written
    for, Triton 3.6 to 3.9): the caller then runs the Triton kernel, and the failure is warned about once per
    key."""
    if _COMPILES.get(key) is False:
        return False
    if key not in _COMPILES:  # the first call compiles and loads the kernel, which raises before any launch
        try:
            launch()
        except Exception as err:  # whatever this Triton's compiler or loader raises
            _COMPILES[key] = False
            message = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            warnings.warn(f"the Gluon {key[0]} does not run on Triton {triton.__version__} ({message}); the Triton "
                          f"{key[0]} runs instead", RuntimeWarning, stacklevel=4)
            return False
        _COMPILES[key] = True
        return True
    launch()
    return True


def _descriptor(t: torch.Tensor, rows: int, dim: int) -> TensorDescriptor:
    """A tensor descriptor of the 2-D view t with tiles of `rows` rows and one head's `dim` columns."""
    element = gl.bfloat16 if t.dtype == torch.bfloat16 else gl.float16
    layout = gl.NVMMASharedLayout.get_default_for([rows, dim], element)
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [rows, dim], layout)


def forward_flags(names: Collection[str], *, norm: bool, distance_cap: int | None, head_dim: int) -> set[str]:
    """The names of the forward's FLAGS (`flags`) for the statistics `names`: those, norm where
    the received pass follows, distance_cap where window_distance is capped, thread_release where every
    consumer thread frees its stages (RELEASE), stage_pairs where STAGE_PAIRS asks for it at head_dim and
    thread_sums where THREAD_SUMS does. A mode outside PAIRS_MODES or SUMS_MODES is refused, naming it."""
    wanted = set(names) | ({"norm"} if norm else set())
    if distance_cap is not None and "window_distance" in names:
        wanted.add("distance_cap")
    pairs = STAGE_PAIRS[head_dim]
    if pairs not in PAIRS_MODES:
        raise ValueError(f"STAGE_PAIRS[{head_dim}]={pairs!r}: expected one of {PAIRS_MODES}")
    if pairs == "always" or (pairs == "lse" and wanted <= {"lse"}):
        if STAGES[head_dim] % 2:
            raise ValueError(f"STAGE_PAIRS[{head_dim}]={pairs!r} needs an even number of stages, not "
                             f"STAGES[{head_dim}]={STAGES[head_dim]}")
        wanted.add("stage_pairs")
    if RELEASE == "thread":
        wanted.add("thread_release")
    sums = THREAD_SUMS[head_dim]
    if sums not in SUMS_MODES:
        raise ValueError(f"THREAD_SUMS[{head_dim}]={sums!r}: expected one of {SUMS_MODES}")
    if sums == "always" or (sums == "full" and FULL_SUMS <= wanted and "distance_cap" not in wanted):
        wanted.add("thread_sums")
    return wanted


def forward(views: Views, shape: torch.Size, kv_heads: int, out: torch.Tensor, res: dict[str, torch.Tensor],
            norm: tuple[torch.Tensor, torch.Tensor] | None, *, scale: float, sink_positions: torch.Tensor,
            distance_cap: int | None) -> bool:
    """Write out and the per-query statistics in `res` (allocated as the Triton forward's, window_distance capped
    at distance_cap tokens unless None), and the received pass's row max and log2 sum into `norm` when given;
    True. views: what `applies` gave for q [shape], k and v (kv_heads heads). False, with nothing launched, where
    this Triton cannot compile or load the forward (`_launch`)."""
    batch, heads, length, dim = shape
    (q2, qb, qh, qc), (k2, kb, kh, kc), (v2, _, _, _) = views
    wanted = forward_flags(res, norm=norm is not None, distance_cap=distance_cap, head_dim=dim)
    key = ("forward", flags(wanted, sink_positions.numel()), q2.dtype, dim)
    dummy = sink_positions
    row_max, row_sum = norm if norm is not None else (dummy, dummy)

    def launch() -> None:
        if "learned_sink_mass" in res:  # no learned sink on this path
            res["learned_sink_mass"].zero_()
        gluon_stats_forward[(length // 128, batch * heads)](
            _descriptor(q2, 64, dim), _descriptor(k2, BLOCK_N, dim), _descriptor(v2, BLOCK_N, dim), out,
            *(res.get(name, dummy) for name in (
                "lse", "entropy", "sink_mass", "max_prob", "argmax_key", "window_distance", "self_mass")),
            row_max, row_sum, sink_positions, k2, k2.stride(0), heads, heads // kv_heads, length, qb, qh, qc, kb, kh,
            kc, out.stride(0), out.stride(1), out.stride(2), scale * LOG2E, float(distance_cap or 0),
            distance_cap or 0, FLAGS=key[1], STAGES=STAGES[dim], num_warps=4)

    return _launch(key, launch)


def received(views: Views, shape: torch.Size, kv_heads: int, norm: tuple[torch.Tensor, torch.Tensor],
             out: torch.Tensor, *, scale: float) -> bool:
    """Write `received` [batch, heads, length] into out from the row max and log2 sum that the Gluon forward
    stored in `norm`, and True; False, with nothing launched, where this Triton cannot compile or load the pass
    (`_launch`)."""
    if not RECEIVED_ALLOWED:
        return False
    batch, heads, length, dim = shape
    (q2, qb, qh, qc), (k2, kb, kh, kc), _ = views
    programs = RECEIVED_PROGRAMS
    key = ("received pass", RECEIVED_STAGES, RECEIVED_GROUP, programs, q2.dtype, dim)
    queries = BLOCK_QUERIES[programs]

    def launch() -> None:
        lse2 = (norm[0] + norm[1]).view(-1)  # each query's base-2 log normaliser
        lse_desc = TensorDescriptor(lse2, list(lse2.shape), [1], [queries], C_LAYOUT)
        gluon_received_pass[(length // 128, batch * heads)](
            _descriptor(q2, queries, dim), _descriptor(k2, 64, dim), lse_desc, out, heads, heads // kv_heads, length,
            qb, qh, qc, kb, kh, kc, scale * LOG2E, STAGES=RECEIVED_STAGES, GROUP=RECEIVED_GROUP, PROGRAMS=programs,
            **launch_options(programs))

    return _launch(key, launch)
