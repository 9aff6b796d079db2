"""The statistics contract shared by every attention backend (see DESIGN.md, "Statistics contract").

For head h, query row i and the keys j it may see, with s_ij = scale * q_i . k_j passed through the
optional softcap, the per-head temperature and the additive key bias:

    p_ij              = softmax_j(s_ij)
    lse_i             = log sum_j exp(s_ij)
    entropy_i         = -sum_j p_ij log p_ij                      (nats)
    sink_mass_i       = sum_{j in sink keys} p_ij
    max_prob_i        = max_j p_ij
    argmax_key_i      = argmax_j p_ij                             (position, see below)
    window_distance_i = sum_j p_ij * min(|i - j|, distance_cap)  (distance_cap=None: no cap)
    self_mass_i       = p_ii                                      (the row's attention to its own position)
    received_j        = sum_i p_ij                                (over real, non-padding query rows)
    block_mass[a, b]  = sum_{i in query block a} sum_{j in key block b} p_ij
    block_max[a, b]   = max_{i in query block a, j in key block b} p_ij   (0 where no row sees a key of the block)
    learned_sink_mass_i = 1 - sum_j p_ij = exp(u_h - lse_i)       (0 without learned sinks)

Learned sinks (GPT-OSS; the "attention sinks" of Xiao et al. 2023, "Efficient Streaming Language Models with
Attention Sinks", learned as one logit u_h per head): `sinks` [Hq] holds a logit that joins every row's softmax
denominator without a key or a value, p_ij = exp(s_ij) / (sum_j exp(s_ij) + exp(u_h)), so a row's weights sum to
1 - learned_sink_mass_i and lse_i is the log of that whole denominator. Every other statistic is read off the
weights p_ij of the keys, which are the model's own attention weights (entropy is -sum_j p_ij log p_ij over the
keys, the sink's own term left out). The sink logit is not scaled or softcapped (it is a logit already);
the temperature edit divides it like every logit of the row, and `HeadEdits.sink_bias` is added to it.

Blocks hold `block_size` positions (64-1024, default 128): key block b holds the keys whose position, counted
from the first real key, is in [b * block_size, (b + 1) * block_size); query block a holds the query rows counted
likewise from the first real query row. There are ceil(Lq / block_size) x ceil(Lk / block_size) blocks per head
(those past a sequence's real tokens hold 0); with Lq = Lk (a whole prompt) both grids cut the same positions.
Each query row sums to 1 over its keys, so a query block's row of block_mass sums to its number of real rows
(SeerAttention, Gao et al. 2024, trains its block gates against exactly this map).

With a block-sparse edit (`HeadEdits.block_keep`), the keys of the dropped blocks are hidden from the rows of
that query block before the softmax, as a block-sparse attention skips them: p is the softmax over the kept
keys, and every statistic describes it.
With a redistribution edit (`HeadEdits.redistribute`, VAR), every statistic but lse describes the edited
map p' of that edit in place of p (out_i = sum_j p'_ij v_j); lse stays the log-normalizer of the edited
logits, log sum_j exp(s_ij), which is what the redistribution leaves untouched.

Positions (sink keys, argmax_key) count from the first non-padding key of each sequence, so a left-padded
batch gives the same numbers as the unpadded sequence. Query i sits at key position i + (Lk - Lq)
(bottom-right alignment: chunked prefill and decoding against a KV cache). A row that sees no key
(a padding query) has out = 0, NaN statistics and argmax_key = -1; it adds nothing to `received`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields

import torch

QUERY_STATS: tuple[str, ...] = ("lse", "entropy", "sink_mass", "max_prob", "argmax_key", "window_distance",
                                 "self_mass", "learned_sink_mass")
KEY_STATS: tuple[str, ...] = ("received",)
BLOCK_STATS: tuple[str, ...] = ("block_mass", "block_max")
ALL_STATS: tuple[str, ...] = QUERY_STATS + KEY_STATS + BLOCK_STATS
BLOCK_SIZES = (64, 1024)  # the smallest and largest block size of the block statistics
DEFAULT_BLOCK_SIZE = 128


def check_stats(stats: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate requested statistic names; return them as a tuple. Unknown names raise ValueError."""
    stats = tuple(stats)
    unknown = [s for s in stats if s not in ALL_STATS]
    if unknown:
        raise ValueError(f"unknown statistic(s) {unknown}; known: {list(ALL_STATS)}")
    return stats


def check_block_size(block_size: int) -> int:
    """The block size of the block statistics as an int; ValueError naming it unless an integer in 64-1024."""
    low, high = BLOCK_SIZES
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not low <= block_size <= high:
        raise ValueError(f"block_size {block_size!r} must be an integer from {low} to {high}")
    return block_size


def check_distance_cap(distance_cap: int | None) -> int | None:
    """The window distance's cap as given (None: uncapped); ValueError naming it unless a positive integer."""
    if distance_cap is None:
        return None
    if isinstance(distance_cap, bool) or not isinstance(distance_cap, numbers.Integral) or distance_cap < 1:
        raise ValueError(f"distance_cap {distance_cap!r} must be a positive integer (tokens) or None")
    return int(distance_cap)


def n_blocks(length: int, block_size: int) -> int:
    """How many blocks of `block_size` positions cover `length` positions."""
    return -(-length // block_size)


def check_shapes(q: torch.Tensor, k: torch.Tensor, key_padding: torch.Tensor | None = None) -> None:
    """Raise ValueError naming the mismatch: query heads not a multiple of key-value heads (GQA), more
    queries than keys, or a key_padding that is not [batch, keys]."""
    batch, n_heads, lq = q.shape[:3]
    kv_heads, lk = k.shape[1], k.shape[2]
    if n_heads % kv_heads:
        raise ValueError(f"{n_heads} query heads are not a multiple of {kv_heads} key-value heads")
    if lq > lk:
        raise ValueError(f"more queries ({lq}) than keys ({lk}): queries must be the last Lq positions of the keys")
    if key_padding is not None and tuple(key_padding.shape) != (batch, lk):
        raise ValueError(f"key_padding has shape {tuple(key_padding.shape)}, expected {(batch, lk)}")


_KEY_FIELDS = ("bias_keys", "source_keys", "target_keys", "keep_block_size")  # not per head


def _same_keys(a: torch.Tensor, b: torch.Tensor) -> bool:
    return sorted(a.tolist()) == sorted(b.tolist())


@dataclass(frozen=True, eq=False)
class HeadEdits:
    """Per-head edits that an attention backend applies inside its pass; each field `None` is the identity.

    Instances compare by identity: a field-wise == of tensors has no truth value (and a tracer capture that
    holds two alike edits must still be found in its list of active captures).

    Shapes use Hq, the number of query heads of the layer.
    - temperature  [Hq]: divides the (softcapped) logits, s_ij / T_h. T > 1 flattens, T < 1 sharpens.
    - key_bias     [Hq, n]: added to the logits of keys `bias_keys` (ZeroTuning, ACT: a bias of log(c)
      scales a key's unnormalized weight by c, then softmax renormalizes).
    - bias_keys    [n]: key positions of `key_bias`, counted like sink keys (from the first real key).
    - gate         [Hq]: multiplies the head's output (0 ablates the head, > 1 reinforces it).
    - sink_bias    [Hq]: added to the learned sink logit u_h of a model that has one (a bias of log(c) scales
      the sink's unnormalized weight by c, then softmax renormalizes: c = 0 removes the sink, c > 1 strengthens
      it); ValueError on a layer without learned sinks.
    - identity_mix [Hq]: a_h in [0, 1]; out_i = (1 - a_h) * attn_out_i + a_h * v_i (SoftPAG, Ahn et al.).
    - redistribute [Hq]: f_h in [0, 1], with source_keys [m] and target_keys [n] (disjoint positions, counted
      like sink keys): VAR (Kang et al. 2025, "See What You Are Told: Visual Attention Sink in Large
      Multimodal Models") moves the fraction f_h of each row's attention on the source keys to the target
      keys, in proportion to what the targets already get. With S_i, T_i the row's mass on sources, targets:
          p'_ij = (1 - f) p_ij                 j a source
          p'_ij = p_ij (1 + f S_i / T_i)       j a target
          p'_ij = p_ij                         otherwise, and on every key of a row with T_i = 0.
      Rows still sum to 1. It depends on the whole row, so it is no logit bias: the kernels apply it in-pass.
    - block_keep   [Hq, 1 or B, n_qblocks, n_kblocks] bool, with keep_block_size (64-1024, default 128): which key
      blocks each query block of each head sees (per sequence of the batch, or one mask for all), blocks counted
      as those of `block_mass`; the others are skipped, as block-sparse attention does (SeerAttention, The
      Sparse Frontier). A row left with no key (every block it sees dropped) gets out = 0 and NaN statistics.
    Statistics describe the softmax map after temperature and bias, then the redistribution (see the module
    docstring for lse); gate and identity_mix act on the output only, so they leave the statistics unchanged.
    """

    temperature: torch.Tensor | None = None
    key_bias: torch.Tensor | None = None
    bias_keys: torch.Tensor | None = None
    gate: torch.Tensor | None = None
    sink_bias: torch.Tensor | None = None
    identity_mix: torch.Tensor | None = None
    redistribute: torch.Tensor | None = None
    source_keys: torch.Tensor | None = None
    target_keys: torch.Tensor | None = None
    block_keep: torch.Tensor | None = None
    keep_block_size: int | None = None

    def __post_init__(self) -> None:
        if (self.key_bias is None) != (self.bias_keys is None):
            raise ValueError("key_bias and bias_keys must be given together")
        if self.key_bias is not None and self.key_bias.shape[-1] != self.bias_keys.shape[-1]:
            raise ValueError(
                f"key_bias has {self.key_bias.shape[-1]} columns but bias_keys has {self.bias_keys.shape[-1]} keys"
            )
        given = [self.redistribute is not None, self.source_keys is not None, self.target_keys is not None]
        if any(given) and not all(given):
            raise ValueError("redistribute, source_keys and target_keys must be given together")
        if all(given):
            self._check_redistribution()
        if self.block_keep is not None:
            if self.block_keep.dtype != torch.bool or self.block_keep.dim() != 4:
                raise ValueError(f"HeadEdits.block_keep must be a bool [heads, 1 or batch, query blocks, key blocks] "
                                 f"tensor, got {self.block_keep.dtype} {tuple(self.block_keep.shape)}")
            object.__setattr__(self, "keep_block_size", check_block_size(self.keep_block_size or DEFAULT_BLOCK_SIZE))
        elif self.keep_block_size is not None:
            raise ValueError("keep_block_size needs a block_keep mask")

    def _check_redistribution(self) -> None:
        fractions = self.redistribute.tolist()
        bad = [f for f in fractions if not 0.0 <= f <= 1.0]
        if bad:
            raise ValueError(f"HeadEdits.redistribute fractions {bad} are outside [0, 1]")
        sources, targets = self.source_keys.tolist(), self.target_keys.tolist()
        for name, keys in (("source_keys", sources), ("target_keys", targets)):
            if not keys or any(key < 0 for key in keys) or len(set(keys)) != len(keys):
                raise ValueError(f"HeadEdits.{name} {keys} must be distinct non-negative positions, at least one")
        both = sorted(set(sources) & set(targets))
        if both:
            raise ValueError(f"keys {both} are both source and target of the redistribution")

    def then(self, other: HeadEdits) -> HeadEdits:
        """The edits of `self` followed by those of `other`, as one HeadEdits.

        Temperatures and gates multiply, key biases add up (on the union of their keys), so do sink biases, and
        identity mixes
        compose as 1 - (1 - a1)(1 - a2), which is what mixing twice toward v_i gives. Gates act last, on the
        mixed output, so composed edits do not depend on their order. Redistributions act on the map after
        every logit edit; two of them compose only over the same source and target keys, as
        1 - (1 - f1)(1 - f2), which is exactly what redistributing twice gives (the second one finds the
        targets' mass grown by f1 S, in the same proportions); other pairs raise ValueError.
        Block masks intersect (a block is kept where both keep it); they must share their block size.
        """
        def product(a, b):
            return b if a is None else a if b is None else a * b

        def complement(x):
            return None if x is None else 1 - x

        def total(a, b):
            return b if a is None else a if b is None else a + b

        key_bias, bias_keys = self.key_bias, self.bias_keys
        if other.key_bias is not None:
            key_bias = other.key_bias if key_bias is None else torch.cat([key_bias, other.key_bias], dim=-1)
            bias_keys = other.bias_keys if bias_keys is None else torch.cat([bias_keys, other.bias_keys])
        source_keys, target_keys = self.source_keys, self.target_keys
        if self.redistribute is not None and other.redistribute is not None and not (
                _same_keys(self.source_keys, other.source_keys) and _same_keys(self.target_keys, other.target_keys)):
            raise ValueError(
                f"cannot compose redistributions from keys {self.source_keys.tolist()} to "
                f"{self.target_keys.tolist()} and from {other.source_keys.tolist()} to {other.target_keys.tolist()}"
            )
        if self.redistribute is None:
            source_keys, target_keys = other.source_keys, other.target_keys
        block_keep, keep_size = self.block_keep, self.keep_block_size
        if other.block_keep is not None:
            if block_keep is not None and keep_size != other.keep_block_size:
                raise ValueError(f"cannot compose block masks of blocks of {keep_size} and {other.keep_block_size}")
            block_keep = other.block_keep if block_keep is None else block_keep & other.block_keep
            keep_size = other.keep_block_size
        return HeadEdits(temperature=product(self.temperature, other.temperature), key_bias=key_bias,
                         bias_keys=bias_keys, gate=product(self.gate, other.gate),
                         sink_bias=total(self.sink_bias, other.sink_bias),
                         identity_mix=complement(product(complement(self.identity_mix),
                                                         complement(other.identity_mix))),
                         redistribute=complement(product(complement(self.redistribute),
                                                         complement(other.redistribute))),
                         source_keys=source_keys, target_keys=target_keys, block_keep=block_keep,
                         keep_block_size=keep_size)

    def is_identity(self) -> bool:
        """True when no edit is set."""
        return all(getattr(self, f.name) is None for f in fields(self))

    def check(self, n_heads: int, lq: int | None = None, lk: int | None = None, batch: int | None = None) -> None:
        """Raise ValueError naming the field whose leading size is not the number of query heads, or a block
        mask whose grid does not fit lq queries and lk keys of `batch` sequences (when given)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and f.name not in _KEY_FIELDS and value.shape[0] != n_heads:
                raise ValueError(f"HeadEdits.{f.name} has {value.shape[0]} heads, the layer has {n_heads}")
        if self.block_keep is not None and lq is not None:
            size = self.keep_block_size
            want = (n_blocks(lq, size), n_blocks(lk, size))
            if tuple(self.block_keep.shape[2:]) != want or self.block_keep.shape[1] not in (1, batch):
                raise ValueError(f"HeadEdits.block_keep has shape {tuple(self.block_keep.shape)}: {lq} queries and "
                                 f"{lk} keys of {batch} sequence(s) in blocks of {size} need "
                                 f"({n_heads}, 1 or {batch}, {want[0]}, {want[1]})")


def sink_logits(sinks: torch.Tensor | None, edits: HeadEdits, n_heads: int, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor | None:
    """The learned sink logit of each query head after the edits, u_h / T_h + sink_bias_h: [Hq] in `dtype`.

    None for a layer without learned sinks; ValueError when `sinks` is not [Hq], or when a sink bias is asked of
    a layer that has no learned sink (it would silently do nothing).
    """
    if sinks is None:
        if edits.sink_bias is not None:
            raise ValueError("HeadEdits.sink_bias edits the learned attention sinks, and this layer has none")
        return None
    if tuple(sinks.shape) != (n_heads,):
        raise ValueError(f"sinks has shape {tuple(sinks.shape)}, expected one logit per query head ({n_heads},)")
    u = sinks.to(device=device, dtype=dtype)
    if edits.temperature is not None:
        u = u / edits.temperature.to(device=device, dtype=dtype)
    if edits.sink_bias is not None:
        u = u + edits.sink_bias.to(device=device, dtype=dtype)
    return u.contiguous()
