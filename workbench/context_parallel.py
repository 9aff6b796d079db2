"""Context parallelism: one sequence split across the ranks of torch.distributed, every statistic exact.

The split is the zigzag one of Llama 3's context parallelism (Dubey et al. 2024, "The Llama 3 Herd of Models",
section 3.3.2): the padded sequence is cut into 2n equal chunks and rank r holds chunks r and 2n-1-r, so under a
causal mask every rank has the same work. Each rank runs the whole model on its own positions (with their global
position ids): token-wise layers need nothing from the other ranks. In each attention the ranks all-gather the
keys and values (`torch.distributed.all_gather`, as Llama 3 does), and each runs the kernel on each of its query
chunks against the causal key prefix that chunk sees. Every query row thus meets all of its keys in one kernel
call: its statistics (lse, entropy, sink mass, max_prob, argmax_key, window distance, self mass) and every
in-kernel edit, the VAR redistribution included, are exactly those of one process, with no merge of partial
softmax sums. Only the per-key and per-block statistics are split: each rank holds `received` (the column sums)
and `block_mass` / `block_max` of its own query rows, and the ranks add them up (all_reduce: a sum, and a maximum
for `block_max`). The attention output per row is the single-process one, so the logits are unchanged.

Blocks count from each sequence's first real token (`workbench.kernels.contract`); with the block statistics the
sequence is padded to a multiple of 2 x world x block_size, so that every chunk starts on a block edge of every
sequence whose first real token does (a sequence without left padding, or left padding of whole blocks), and
each chunk's blocks are the whole sequence's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from workbench import kernels
from workbench.errors import WorkbenchError
from workbench.kernels.contract import n_blocks


@dataclass
class Shards:
    """This rank's share of the sequence. Positions count in the padded sequence of `length` tokens."""

    rank: int
    world: int
    length: int  # padded length, a multiple of 2 x world
    chunks: tuple[int, int]  # the two chunk indices this rank holds, in local order
    positions: torch.Tensor  # [2 x chunk] this rank's global positions, in local order
    key_padding: torch.Tensor  # [batch, length] bool, True for real tokens (the end padding is False)
    group: dist.ProcessGroup | None = None

    @property
    def chunk(self) -> int:
        return self.length // (2 * self.world)


def zigzag(world: int, rank: int) -> tuple[int, int]:
    """The two chunks (of 2 x world) rank `rank` holds: rank and 2 x world - 1 - rank."""
    return rank, 2 * world - 1 - rank


def split(attention_mask: torch.Tensor, group: dist.ProcessGroup | None = None,
          block_size: int | None = None) -> Shards:
    """This rank's Shards of a [batch, L] attention mask, the sequence padded at its end to a multiple of
    2 x world (the padding is masked: causal rows never see it, and it is cut off the results).

    block_size: the blocks of `block_mass` / `block_max` to be traced, when they are: the sequence is padded to a
    multiple of 2 x world x block_size, and each sequence's first real token must start a block (no left
    padding, or whole blocks of it), else WorkbenchError before any work."""
    if not dist.is_available() or not dist.is_initialized():
        raise WorkbenchError("context_parallel needs torch.distributed initialized: launch with torchrun, which "
                             "sets up the process group (`workbench trace --context-parallel` initializes it)")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    length = attention_mask.shape[1]
    unit = 2 * world * (block_size or 1)
    if block_size:
        first = _first(attention_mask.bool())
        off_edge = sorted({int(f) for f in first if f % block_size})
        if off_edge:
            raise WorkbenchError(
                f"block statistics under context parallelism need each sequence's first real token on a block edge "
                f"(a multiple of block_size={block_size}); the left padding puts it at {off_edge}: pad on the "
                "right, or trace the block statistics in one process")
    padded = -(-length // unit) * unit
    mask = torch.nn.functional.pad(attention_mask.bool(), (0, padded - length), value=False)
    chunk = padded // (2 * world)
    chunks = zigzag(world, rank)
    positions = torch.cat([torch.arange(c * chunk, (c + 1) * chunk) for c in chunks]).to(attention_mask.device)
    return Shards(rank, world, padded, chunks, positions, mask, group)


def local_inputs(shards: Shards, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model inputs of this rank: its tokens, their attention mask and their global position ids."""
    ids = torch.nn.functional.pad(input_ids, (0, shards.length - input_ids.shape[1]), value=0)
    pos = shards.positions
    return {"input_ids": ids[:, pos], "attention_mask": shards.key_padding[:, pos].long(),
            "position_ids": pos[None].expand(ids.shape[0], -1)}


def _rank_order(shards: Shards) -> torch.Tensor:
    """The global positions of an all-gathered sequence dimension, rank after rank."""
    chunk = shards.chunk
    return torch.cat([torch.arange(c * chunk, (c + 1) * chunk) for r in range(shards.world)
                      for c in zigzag(shards.world, r)]).to(shards.positions.device)


def gather_sequence(local: torch.Tensor, dim: int, shards: Shards) -> torch.Tensor:
    """Every rank's `local` (this rank's positions along `dim`) as the whole padded sequence, in position order."""
    device = local.device
    if device.type != "cpu" and dist.get_backend(shards.group) == "gloo":
        local = local.cpu()  # gloo gathers host tensors only (ranks sharing one GPU run gloo)
    local = local.contiguous()
    parts = [torch.empty_like(local) for _ in range(shards.world)]
    dist.all_gather(parts, local, group=shards.group)
    gathered = torch.cat(parts, dim=dim).to(device)
    full = torch.empty_like(gathered)
    full.index_copy_(dim, _rank_order(shards), gathered)
    return full


def sum_over_ranks(partial: torch.Tensor, shards: Shards, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """The sum (or `op`) of every rank's `partial` (`received`: each rank's column sums over its own query rows)."""
    total = partial.clone()
    dist.all_reduce(total, op=op, group=shards.group)
    return total


SPLIT = ("received", *kernels.BLOCK_STATS)  # the statistics each rank holds a share of, merged by all_reduce


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, shards: Shards, *, causal: bool,
              stats: Sequence[str], block_size: int = kernels.DEFAULT_BLOCK_SIZE,
              **options) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This rank's attention output [B, Hq, l, Dv] and statistics (per query: its l rows; `received`: this rank's
    partial column sums over the whole padded sequence [B, Hq, L]; the block statistics: this rank's rows' share
    of the whole padded sequence's blocks [B, Hq, L / block_size, L / block_size]; `combine` merges them).

    query/key/value hold this rank's positions; options are those of `workbench.kernels.attention` but
    `key_padding`, which comes from `shards` (split with this block_size when block statistics are asked)."""
    if not causal:
        raise WorkbenchError("context parallelism splits causal attention only: this model's attention is "
                             "bidirectional (every query sees every key), trace it in one process")
    keys, values = gather_sequence(key, 2, shards), gather_sequence(value, 2, shards)
    chunk = shards.chunk
    outs, pieces = [], []
    for i, c in enumerate(shards.chunks):
        stop = (c + 1) * chunk  # the chunk's queries see keys 0..stop-1 (bottom-right aligned in the kernel)
        q = query[:, :, i * chunk:(i + 1) * chunk]
        out, computed = kernels.attention(q, keys[:, :, :stop], values[:, :, :stop], causal=True,
                                          key_padding=shards.key_padding[:, :stop], stats=stats,
                                          block_size=block_size, **options)
        outs.append(out)
        pieces.append(computed)
    result = {name: torch.cat([p[name] for p in pieces], dim=-1) for name in stats if name not in SPLIT}
    if "received" in stats:
        received = torch.zeros(*query.shape[:2], shards.length, dtype=torch.float32, device=query.device)
        for piece in pieces:
            part = piece["received"]
            received[..., :part.shape[-1]] += part
        result["received"] = received
    result |= _blocks_of_chunks(pieces, stats, shards, block_size)
    return torch.cat(outs, dim=2), result


def _blocks_of_chunks(pieces: list[dict[str, torch.Tensor]], stats: Sequence[str], shards: Shards,
                      block_size: int) -> dict[str, torch.Tensor]:
    """This rank's block statistics on the whole padded sequence's grid, from those of its chunks' kernel calls.

    A chunk's call counts its query blocks from its first real row: with chunks on block edges (`split`), its
    block a is the sequence's block a + (chunk start - first real token) / block_size where the chunk starts
    after the sequence's first real token, else block a itself. Its key blocks are the sequence's."""
    names = [name for name in kernels.BLOCK_STATS if name in stats]
    if not names:
        return {}
    n = shards.length // block_size
    first = _first(shards.key_padding).tolist()  # read once, not per chunk and sequence
    blocks = {}
    for name in names:
        grid = torch.zeros(*pieces[0][name].shape[:2], n, n, dtype=torch.float32, device=pieces[0][name].device)
        for c, piece in zip(shards.chunks, pieces, strict=True):
            part = piece[name]
            for b in range(grid.shape[0]):
                row = max(c * shards.chunk - first[b], 0) // block_size
                target = grid[b, :, row:row + part.shape[-2], :part.shape[-1]]
                if name == "block_mass":
                    target += part[b]
                else:
                    torch.maximum(target, part[b], out=target)
        blocks[name] = grid
    return blocks


def combine(name: str, record: torch.Tensor, shards: Shards, length: int) -> torch.Tensor:
    """One layer's statistic of the whole sequence from every rank's share, cut to the input's `length`:
    per query rows gathered in position order, `received` and `block_mass` summed over ranks, `block_max` their
    maximum (each block's p are >= 0, and 0 on the ranks whose rows are not in it)."""
    if name == "received":
        return sum_over_ranks(record, shards)[..., :length]
    if name in kernels.BLOCK_STATS:
        block_size = shards.length // record.shape[-1]
        n = n_blocks(length, block_size)
        op = dist.ReduceOp.MAX if name == "block_max" else dist.ReduceOp.SUM
        return sum_over_ranks(record, shards, op)[..., :n, :n]
    return gather_sequence(record, record.ndim - 1, shards)[..., :length]


def _first(mask: torch.Tensor) -> torch.Tensor:
    """[B]: the position of each sequence's first real token (0 for a sequence with none)."""
    return mask.long().argmax(-1)


def _last(mask: torch.Tensor) -> torch.Tensor:
    """[B]: the position of each sequence's last real token."""
    return (mask.long() * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)


def last_rows(shards: Shards, mask: torch.Tensor) -> torch.Tensor:
    """The local indices of this rank's tokens that are some sequence's last real token (often none): the only
    rows whose logits a trace keeping the last logits needs (`logits_to_keep`)."""
    return torch.nonzero(torch.isin(shards.positions, _last(mask))).flatten()


def last_logits(logits: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor, shards: Shards) -> torch.Tensor:
    """[B, vocab] float32: the logits at each sequence's last real token, from whichever rank holds it, given this
    rank's logits [B, len(rows), vocab] at its local rows `rows`."""
    held = shards.positions[rows][None, :] == _last(mask)[:, None]  # [B, rows]
    mine = (logits.float() * held[..., None]).sum(1)
    return sum_over_ranks(mine, shards)


def start(device: str | None = None) -> str:
    """Join the process group that `torchrun` describes in the environment (NCCL where every rank on this host
    has a GPU of its own, else gloo: ranks sharing one GPU, or CPUs) unless one is up; this rank's device."""
    import os

    if "WORLD_SIZE" not in os.environ and not dist.is_initialized():
        raise WorkbenchError("context parallelism runs under torchrun: torchrun --nproc-per-node N "
                             "$(which workbench) trace --context-parallel ...")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    per_host = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() and device != "cpu" else 0
    if device is None:
        device = f"cuda:{local_rank % gpus}" if gpus else "cpu"
    if not dist.is_initialized():
        own_gpu = gpus >= per_host and device.startswith("cuda")
        if own_gpu:
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if own_gpu else "gloo")
    return device
