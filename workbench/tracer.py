"""The tracer: transformers' AttentionInterface entry `workbench`, and `trace()` built on it.

While a `capture` is active, every attention call of the model goes through `workbench.kernels.attention`, which
returns the attention output and the requested statistics in the same pass; the capture files them by
layer. The model's own forward is otherwise untouched, so its logits equal those of its `sdpa` run.
The matching mask function hands the kernel a [batch, keys] padding mask (or None) instead of a
[batch, 1, q, k] mask: causality and sliding windows are applied inside the kernel, and no q x k tensor
is ever built.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from workbench import context_parallel as cp
from workbench import kernels
from workbench.bridge import hf_attention
from workbench.errors import WorkbenchError
from workbench.host_records import HostSlabs
from workbench.kernels import HeadEdits
from workbench.subject import Subject
from workbench.trace import Trace

IMPLEMENTATION = "workbench"
T = TypeVar("T")
DEFAULT_STATS = ("entropy", "sink_mass", "max_prob", "argmax_key", "lse", "received", "window_distance",
                 "self_mass")  # and learned_sink_mass for a model with learned sinks (`default_stats`)
# attention-call keyword arguments that change nothing the kernels compute: output flags, and positions, which are
# already in q and k (packed sequences' cu_seq_lens / seq_idx would make the attention block-diagonal: they raise)
IGNORED_KWARGS = frozenset({"position_ids", "cache_position", "position_embeddings", "output_attentions",
                            "output_hidden_states", "output_router_logits", "return_dict", "use_cache",
                            "past_key_values", "past_key_value", "layer_idx", "token_type_ids", "num_items_in_batch"})
MAX_DEFAULT_PATTERN = 512  # patterns over longer inputs need an explicit pattern_window
LOGITS = ("last", "all", None)


@dataclass(eq=False)
class Capture:
    """The state of one capture: what to compute, the edits to apply, and what was recorded, per layer.

    Compared by identity (eq=False): the active list must remove this capture, not an equal-looking one."""

    layer_of: dict[int, int]
    stats: tuple[str, ...] = ()
    sink_keys: tuple[int, ...] = (0,)
    distance_cap: int | None = None
    block_size: int = kernels.DEFAULT_BLOCK_SIZE
    edits: dict[int, HeadEdits] = field(default_factory=dict)
    patterns: dict[int, list[int]] = field(default_factory=dict)  # layer -> heads
    pattern_window: tuple[int, int] | None = None
    backend: str = "auto"
    length: int = 0  # the input's length, where `shards` pads it
    shards: cp.Shards | None = None  # this rank's share of a context-parallel run
    keep_inputs: tuple[int, ...] = ()
    on_layer: Callable[[int], None] | None = None
    records: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    pattern_records: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    input_records: dict[int, AttentionInputs] = field(default_factory=dict)
    host: HostSlabs = field(init=False)  # each statistic's records of every layer on the host, `host_records`

    def __post_init__(self) -> None:
        self.host = HostSlabs(max(self.layer_of.values(), default=-1) + 1)

    def keep(self, layer: int, stats: dict[str, torch.Tensor], pattern_of) -> None:
        """File this capture's share of one attention call's statistics, and its patterns, under `layer`.

        Records on a GPU stay there and are copied to the host while the later layers run, with no
        synchronization (`host_records`); `statistics` hands them out once the forward is done.
        """
        self.records[layer] = {name: self._filed(name, layer, stats[name].detach()) for name in self.stats}
        heads = self.patterns.get(layer)
        if heads:
            pattern = pattern_of(heads, self.pattern_window)
            for i, head in enumerate(heads):
                self.pattern_records[(layer, head)] = pattern[:, i]

    def _filed(self, name: str, layer: int, record: torch.Tensor) -> torch.Tensor:
        """The record as kept (`HostSlabs.put`); in a context-parallel run, a share on an accelerator as it is,
        since only the shares of every rank combined make the host's record (`_whole`)."""
        if self.shards is not None and record.device.type != "cpu":
            return record
        return self.host.put(name, layer, record)

    def statistics(self, n_layers: int) -> dict[str, torch.Tensor]:
        """Every recorded statistic stacked over the layers and brought to the host: [layer, batch, head, q]
        (`received`: [layer, batch, head, k]; block statistics [layer, batch, head, q_blocks, k_blocks]), as a
        Trace holds them. For captures driven by another tool's run
        (an nnsight trace, a TransformerLens bridge): WorkbenchError when a layer did not go through the
        workbench attention."""
        missing = sorted(set(range(n_layers)) - set(self.records))
        if missing:
            raise WorkbenchError(f"layers {missing} did not go through the workbench attention")
        out = {}
        for name in self.stats:
            whole = self.host.take(name, n_layers) if self.shards is None else None
            out[name] = whole if whole is not None else to_host(
                [self._whole(name, self.records[i][name]) for i in range(n_layers)])
        return out

    def _whole(self, name: str, record: torch.Tensor) -> torch.Tensor:
        """The record of the whole input: this rank's share combined with the others' in a context-parallel run."""
        if self.shards is None:
            return record
        return cp.combine(name, record, self.shards, self.length)


@dataclass(frozen=True)
class AttentionInputs:
    """What one layer's attention call was given: q [B, Hq, L, D] and k [B, Hkv, L, D] (after the model's
    position encoding) and the kernel options (causal, scale, softcap, window, key_padding, learned sinks). Any
    window of the layer's attention map (without the capture's edits) is computed from them without running the
    model again (`pattern`)."""

    query: torch.Tensor
    key: torch.Tensor
    options: dict

    def pattern(self, heads: Sequence[int], span: tuple[int, int]) -> torch.Tensor:
        """Query heads `heads`' attention over positions span = (start, stop): [B, len(heads), span, span]
        (`workbench.kernels.attention_pattern`: exact rows, not renormalized to the span).

        Only the asked heads (and their key heads) are computed, and in a causal layer only the keys up to
        `stop`, which are all the span's queries can see: a window costs O(span x stop) per head."""
        stop = span[1] if self.options.get("causal", True) else self.key.shape[2]
        n_heads, group = self.query.shape[1], self.query.shape[1] // self.key.shape[1]
        padding = self.options.get("key_padding")
        options = {**self.options, "key_padding": None if padding is None else padding[:, :stop]}
        maps = []
        for head in heads:  # under no_grad: a model's learned sinks are parameters
            if not 0 <= head < n_heads:
                raise WorkbenchError(f"query head {head} is outside the layer's {n_heads} heads")
            kv, sinks = head // group, options.get("sinks")
            with torch.no_grad():
                maps.append(kernels.attention_pattern(
                    self.query[:, head:head + 1, :stop], self.key[:, kv:kv + 1, :stop], [0], span,
                    **{**options, "sinks": None if sinks is None else sinks[head:head + 1]}))
        return torch.cat(maps, dim=1)


_ACTIVE: list[Capture] = []


def _key_padding(attention_mask: torch.Tensor | None, kv_length: int) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    if attention_mask.ndim != 2:
        raise WorkbenchError(
            f"the workbench attention takes a [batch, keys] padding mask, got shape {tuple(attention_mask.shape)}"
        )
    return attention_mask[:, -kv_length:].bool()


def default_stats(learned_sinks: bool) -> tuple[str, ...]:
    """The statistics a trace keeps unless told: DEFAULT_STATS, and learned_sink_mass where the model has sinks."""
    return (*DEFAULT_STATS, "learned_sink_mass") if learned_sinks else DEFAULT_STATS


def _check_call(module, kwargs: dict) -> None:
    """WorkbenchError naming any attention feature of this call that the kernels do not implement (an argument
    they would otherwise ignore, giving statistics of some other attention)."""
    unknown = sorted(name for name, value in kwargs.items() if value is not None and name not in IGNORED_KWARGS)
    if unknown:
        raise WorkbenchError(
            f"{type(module).__name__} calls the attention with {unknown}, which the workbench kernels do not "
            f"implement: its statistics would be those of a different attention"
        )


def workbench_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                        scaling: float | None = None, is_causal: bool | None = None,
                        sliding_window: int | None = None, softcap: float | None = None,
                        s_aux: torch.Tensor | None = None, **kwargs):
    """AttentionInterface function: q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D] -> ([B, Lq, Hq, Dv], None).

    s_aux: the learned sink logits [Hq] (GPT-OSS), which join each row's softmax denominator. Every active
    capture of this module's model takes part: the kernel computes the union of their statistics with the
    composition of their edits, and each capture keeps what it asked for. Any other argument that would change
    the attention raises WorkbenchError naming it (see `_check_call`).
    """
    _check_call(module, kwargs)
    if dropout:
        raise WorkbenchError(f"attention dropout {dropout} is not supported: put the model in eval mode")
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    captures = [c for c in _ACTIVE if id(module) in c.layer_of]
    layer = captures[0].layer_of[id(module)] if captures else None
    edits = HeadEdits()
    for c in captures:
        edits = edits.then(c.edits.get(layer, HeadEdits()))
    stats = tuple(dict.fromkeys(name for c in captures for name in c.stats))
    options = dict(causal=causal, scale=scaling, softcap=softcap, window=sliding_window,
                   key_padding=_key_padding(attention_mask, key.shape[2]), sinks=s_aux)
    backend = captures[-1].backend if captures else "auto"
    shards = next((c.shards for c in captures if c.shards is not None), None)
    common = dict(stats=stats, edits=edits, backend=backend, sink_keys=captures[-1].sink_keys if captures else (0,),
                  distance_cap=captures[-1].distance_cap if captures else None)
    block_size = captures[-1].block_size if captures else kernels.DEFAULT_BLOCK_SIZE
    if shards is not None:
        del options["key_padding"]  # the whole sequence's, from the shards
        out, computed = cp.attention(query, key, value, shards, block_size=block_size, **options, **common)
    else:
        out, computed = kernels.attention(query, key, value, block_size=block_size, **options, **common)

    def pattern_of(heads, window):
        span = window or (0, key.shape[2])
        return kernels.attention_pattern(query, key, heads, span, edits=edits, **options)

    for c in captures:
        c.keep(layer, computed, pattern_of)
        if layer in c.keep_inputs:
            c.input_records[layer] = AttentionInputs(query.detach(), key.detach(), options)
    for c in captures:
        if c.on_layer is not None:
            c.on_layer(layer)
    return out.transpose(1, 2).contiguous(), None


def padding_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                 mask_function=None, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """AttentionMaskInterface function: the [batch, kv_length] padding mask, None when nothing is padded."""
    if attention_mask is None:
        return None
    attention_mask = attention_mask[:, -kv_length:]
    return None if bool(attention_mask.all()) else attention_mask


AttentionInterface.register(IMPLEMENTATION, workbench_attention)
AttentionMaskInterface.register(IMPLEMENTATION, padding_mask)


@contextlib.contextmanager
def capture(
    subject: Subject,
    *,
    stats: Sequence[str] | None = None,
    sink_keys: Sequence[int] = (0,),
    distance_cap: int | None = None,
    block_size: int = kernels.DEFAULT_BLOCK_SIZE,
    edits: dict[int, HeadEdits] | None = None,
    patterns: Sequence[tuple[int, int]] | None = None,
    pattern_window: tuple[int, int] | None = None,
    backend: str = "auto",
    keep_inputs: Sequence[int] = (),
    on_layer: Callable[[int], None] | None = None,
) -> Iterator[Capture]:
    """Route the subject's attention through the workbench kernels while the block runs; yield the Capture.

    The model's attention implementation is restored on exit, also on error. Captures nest: the innermost
    one's sink_keys, distance_cap, block_size and backend apply, every one's edits compose (`HeadEdits.then`) and
    each gets the statistics it asked for (None: `default_stats` of the model). `edits` maps a layer to the
    HeadEdits its kernel applies.
    keep_inputs: layers whose attention inputs are kept (`Capture.input_records`, AttentionInputs).
    on_layer: called with each layer's index once its attention ran: progress reports, and an exception raised
    there stops the forward (a cancelled run, or one that needs only the first layers).
    """
    adapter = subject.adapter
    for layer, head in patterns or ():
        adapter.check_head(layer, head)
    for layer in (*(edits or {}), *keep_inputs):
        adapter.check_head(layer, 0)
    kernels.resolve_backend(subject.device, backend)
    block_size = _checked(kernels.check_block_size, block_size)
    distance_cap = _checked(kernels.check_distance_cap, distance_cap)
    grouped: dict[int, list[int]] = {}
    for layer, head in patterns or ():
        grouped.setdefault(layer, []).append(head)
    state = Capture(
        layer_of=adapter.layer_of(), stats=kernels.check_stats(default_stats(adapter.learned_sinks) if stats is None
                                                             else stats), sink_keys=tuple(sink_keys),
        distance_cap=distance_cap, block_size=block_size, edits=dict(edits or {}), patterns=grouped,
        pattern_window=pattern_window, backend=backend, keep_inputs=tuple(keep_inputs), on_layer=on_layer,
    )
    model = subject.model
    previous = model.config._attn_implementation
    model.set_attn_implementation(IMPLEMENTATION)
    _ACTIVE.append(state)
    try:
        with hf_attention(model):  # a TransformerLens bridge over the model runs the workbench attention too
            yield state
    finally:
        _ACTIVE.remove(state)
        model.set_attn_implementation(previous)


def _checked(check: Callable[[T], T], value: T) -> T:
    """check(value), its ValueError raised as the WorkbenchError the CLI and app report."""
    try:
        return check(value)
    except ValueError as err:
        raise WorkbenchError(str(err)) from None


def to_host(records: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-layer records and bring them to the host, one copy per device (layers of a model sharded by a
    device_map sit on several), through pinned memory from a GPU.

    Pageable device-to-host copies ran at about 1 GB/s on the H100 machine: at 32k tokens the statistics of a
    16-layer model took longer to copy than the whole forward (benchmarks/results/attention_stats_model_*).
    """
    runs: list[list[torch.Tensor]] = []
    for record in records:  # consecutive layers on one device, as device maps place them
        if runs and runs[-1][0].device == record.device:
            runs[-1].append(record)
        else:
            runs.append([record])
    parts = [_copy_to_host(torch.stack(run)) for run in runs]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _copy_to_host(stacked: torch.Tensor) -> torch.Tensor:
    if stacked.device.type != "cuda":
        return stacked.cpu()
    host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
    host.copy_(stacked, non_blocking=True)
    torch.cuda.current_stream(stacked.device).synchronize()
    return host


def trace(
    subject: Subject,
    inputs,
    *,
    stats: Sequence[str] | None = None,
    sink_keys: Sequence[int] = (0,),
    distance_cap: int | None = None,
    block_size: int = kernels.DEFAULT_BLOCK_SIZE,
    patterns: Sequence[tuple[int, int]] | None = None,
    pattern_window: tuple[int, int] | None = None,
    hidden_states: bool = False,
    logits: str | None = "last",
    backend: str = "auto",
    context_parallel: bool = False,
    on_layer: Callable[[int], None] | None = None,
) -> Trace:
    """Run the subject once on `inputs` (text(s) or token ids) and return a Trace of per-head statistics.

    Statistics are those of `workbench.kernels.contract`: per query [layer, batch, head, q], `received`
    [layer, batch, head, k] and the block statistics (`block_mass`, `block_max`, not traced by default)
    [layer, batch, head, q_blocks, k_blocks] over blocks of `block_size` positions (64-1024); stats=None keeps
    `default_stats` of the model. patterns: (layer, head) pairs whose attention map is kept over `pattern_window`
    = (start, stop) positions (default: the whole input, up to 512 tokens).
    hidden_states: keep the residual stream [layer + 1, batch, pos, d].
    logits: "last" keeps the model's logits at each sequence's last real token [batch, vocab], "all" at every
    position [batch, pos, vocab], None none (and encoders, which have no language-model head, keep none).
    context_parallel: split the sequence across the ranks of the initialized torch.distributed process group
    (see `workbench.context_parallel`); every rank passes the same inputs and gets the same whole Trace.
    on_layer: called with each layer's index once its attention ran (see `capture`).
    """
    if logits not in LOGITS:
        raise WorkbenchError(f"logits={logits!r}: use one of {list(LOGITS)}")
    enc = subject.encode(inputs)
    length = enc["input_ids"].shape[1]
    shortest = int(enc["attention_mask"].sum(-1).min())
    outside = [k for k in sink_keys if not 0 <= k < shortest]
    if outside:
        raise WorkbenchError(f"sink key position(s) {outside} outside the input: its shortest sequence has "
                             f"{shortest} tokens (positions 0-{shortest - 1})")
    if patterns and pattern_window is None and length > MAX_DEFAULT_PATTERN:
        raise WorkbenchError(
            f"input of {length} tokens: pass pattern_window=(start, stop) to bound the patterns' size"
        )
    block_size = _checked(kernels.check_block_size, block_size)
    distance_cap = _checked(kernels.check_distance_cap, distance_cap)
    shards = None
    if context_parallel:
        if patterns:
            raise WorkbenchError("patterns are not kept in a context-parallel trace: trace them in one process")
        blocks = set(stats or ()) & set(kernels.BLOCK_STATS)
        shards = cp.split(enc["attention_mask"], block_size=block_size if blocks else None)
    run = enc if shards is None else cp.local_inputs(shards, enc["input_ids"])
    if shards is None:
        keep = _logits_to_keep(subject, enc["attention_mask"], logits)
    else:  # each rank computes logits only at the last tokens it holds, unless all are kept
        rows, keep = torch.arange(shards.positions.numel(), device=shards.positions.device), {}
        if logits != "all" and _takes_logits_to_keep(subject):
            rows = cp.last_rows(shards, enc["attention_mask"])
            keep = {"logits_to_keep": rows}
    with torch.no_grad(), capture(subject, stats=stats, sink_keys=sink_keys, distance_cap=distance_cap,
                                  block_size=block_size,
                                  patterns=patterns, pattern_window=pattern_window, backend=backend,
                                  on_layer=on_layer) as cap:
        cap.shards, cap.length = shards, length
        out = subject.model(**run, output_hidden_states=hidden_states, use_cache=False, **keep)
    tensors = cap.statistics(subject.adapter.n_layers)
    hidden = None
    if hidden_states:
        hidden = torch.stack([_whole_sequence(h.detach().float(), shards, length).cpu() for h in out.hidden_states])
    kept_logits = getattr(out, "logits", None)
    if shards is not None and kept_logits is not None and logits is not None:
        kept_logits = (_whole_sequence(kept_logits, shards, length) if logits == "all"
                       else cp.last_logits(kept_logits, rows, enc["attention_mask"], shards)[:, None])
    return Trace(
        model_id=subject.name,
        config=subject.adapter.facts(),
        token_ids=enc["input_ids"].cpu(),
        attention_mask=enc["attention_mask"].bool().cpu(),
        tokens=subject.token_strings(enc["input_ids"]),
        stats=tensors,
        hidden_states=hidden,
        logits=_kept_logits(kept_logits, enc["attention_mask"], logits),
        patterns={head: p.cpu() for head, p in cap.pattern_records.items()},
        pattern_window=pattern_window or ((0, length) if patterns else None),
        options={"sink_keys": list(sink_keys), "distance_cap": distance_cap, "block_size": block_size, "logits": logits,
                 "backend": kernels.resolve_backend(subject.device, backend),
                 **({"context_parallel_ranks": shards.world} if shards else {})},
    )


def _whole_sequence(local: torch.Tensor, shards: cp.Shards | None, length: int) -> torch.Tensor:
    """[B, L, ...] of the whole input from this rank's positions [B, l, ...] (unchanged in one process)."""
    return local if shards is None else cp.gather_sequence(local, 1, shards)[:, :length]


def _logits_to_keep(subject: Subject, mask: torch.Tensor, logits: str | None) -> dict:
    """{"logits_to_keep": 1} where only the last position's logits are wanted and every sequence ends there
    (no right padding), so that the model computes one row of logits per sequence instead of L."""
    ends_at_last = bool(mask[:, -1].all())
    return {"logits_to_keep": 1} if logits in (None, "last") and ends_at_last and _takes_logits_to_keep(subject) else {}


def _takes_logits_to_keep(subject: Subject) -> bool:
    return "logits_to_keep" in inspect.signature(subject.model.forward).parameters


def _kept_logits(out: torch.Tensor | None, mask: torch.Tensor, logits: str | None) -> torch.Tensor | None:
    """The logits the trace keeps, float32 on the host: [B, vocab] at each sequence's last real token, or all."""
    if out is None or logits is None:
        return None
    if logits == "all":
        return out.float().cpu()
    if out.shape[1] == 1:
        return out[:, 0].float().cpu()
    last = (mask.long() * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)
    return out[torch.arange(out.shape[0], device=out.device), last].float().cpu()
