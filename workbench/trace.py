"""The Trace: what one traced model run recorded, per layer and head, and its on-disk form.

Tensors are kept in the padded batch layout the model saw, with `attention_mask` saying which positions
are real tokens: query statistics [layer, batch, head, q], `received` [layer, batch, head, k], the block
statistics [layer, batch, head, q_blocks, k_blocks] (blocks of options["block_size"] positions), optional
hidden states [layer + 1, batch, pos, d] and attention patterns [batch, span, span] per (layer, head).
On disk a Trace is a folder: meta.json (ids, token strings, options), tensors.safetensors (every tensor,
bit for bit, the logits too when kept), heads.parquet (the tidy per-head table) and tokens.parquet (the per-token
statistics (not the block ones), one column per statistic, which the results store and DuckDB query in place).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from workbench.atomic import output_folder
from workbench.errors import WorkbenchError
from workbench.kernels import DEFAULT_BLOCK_SIZE

FORMAT_VERSION = 1
TOKENS_FILE = "tokens.parquet"  # the per-token statistics, columnar (`Trace.token_arrow`)
PER_KEY = ("received",)
PER_BLOCK = ("block_mass", "block_max")  # [layer, batch, head, q_blocks, k_blocks]: no per-token column
NOT_AVERAGED = ("argmax_key",)  # positions: a mean over queries means nothing


@dataclass
class Trace:
    """Per-head attention statistics of one model run (see the module docstring for the layout)."""

    model_id: str
    config: dict
    token_ids: torch.Tensor  # [B, L] int64
    attention_mask: torch.Tensor  # [B, L] bool
    tokens: list[list[str]]
    stats: dict[str, torch.Tensor]
    hidden_states: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # [B, vocab] at each sequence's last real token, or [B, L, vocab]
    patterns: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    pattern_window: tuple[int, int] | None = None
    options: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.config["n_layers"])

    @property
    def n_heads(self) -> int:
        return int(self.config["n_heads"])

    @property
    def block_size(self) -> int:
        """Positions per block of the block statistics."""
        return int(self.options.get("block_size", DEFAULT_BLOCK_SIZE))

    def sequence(self, name: str, batch: int = 0) -> torch.Tensor:
        """Statistic `name` of sequence `batch` without its padding: [layer, head, n_real_tokens], or for a block
        statistic the blocks that hold its real tokens, [layer, head, n_blocks, n_blocks]."""
        if name not in self.stats:
            raise WorkbenchError(f"statistic {name!r} was not traced; traced: {sorted(self.stats)}")
        if not 0 <= batch < self.token_ids.shape[0]:
            raise WorkbenchError(f"batch index {batch} is outside the trace's {self.token_ids.shape[0]} sequences")
        if name in PER_BLOCK:
            n = -(-int(self.attention_mask[batch].sum()) // self.block_size)
            return self.stats[name][:, batch, :, :n, :n]
        return self.stats[name][:, batch][..., self.attention_mask[batch]]

    def token_stats(self) -> list[str]:
        """The traced statistics with one value per token (all but the block statistics)."""
        return [name for name in self.stats if name not in PER_BLOCK]

    def window(self, layer: int) -> int | None:
        """The sliding window of `layer` (None for a full-attention layer)."""
        kinds = self.config.get("layer_types") or ["full_attention"] * self.n_layers
        return self.config.get("sliding_window") if kinds[layer] == "sliding_attention" else None

    def visible_keys(self, layer: int) -> torch.Tensor:
        """[B, L] how many keys each query row of `layer` may see (0 on padding), by causality and window."""
        real = self.attention_mask
        position = real.long().cumsum(-1) - 1
        n_real = real.sum(-1, keepdim=True)
        window = self.window(layer) or n_real.max().item()
        if self.config.get("is_causal", True):
            visible = (position + 1).clamp_max(window)
        else:
            visible = (position + window).clamp_max(n_real) - (position - window + 1).clamp_min(0)
        return visible.where(real, 0)

    def real_tokens(self, batch: int = 0) -> list[str]:
        """The token strings of sequence `batch` without its padding."""
        return [t for t, real in zip(self.tokens[batch], self.attention_mask[batch].tolist(), strict=True) if real]

    def head_table(self) -> pd.DataFrame:
        """Tidy per-head table (layer, head, metric, value): each query statistic's mean over real tokens."""
        rows = []
        real = self.attention_mask[None, :, None, :]  # [1, B, 1, L]
        for name, tensor in self.stats.items():
            if name in PER_KEY or name in NOT_AVERAGED or name in PER_BLOCK:
                continue
            t = tensor.float().where(real, torch.nan)
            mean = t.nanmean(dim=(1, 3))  # [layer, head]
            rows.extend(
                (layer, head, name, float(mean[layer, head]))
                for layer in range(mean.shape[0]) for head in range(mean.shape[1])
            )
        return pd.DataFrame(rows, columns=["layer", "head", "metric", "value"])

    def token_arrow(self) -> pa.Table:
        """The per-token statistics over real tokens as a columnar table, one row per (batch, position, layer,
        head) and one float32 column per statistic: what tokens.parquet holds and DuckDB queries in place.

        Positions count from each sequence's first real token; `received` is filed under the key's position.
        Token strings are dictionary-encoded (each distinct token stored once).
        """
        parts = []
        n_layers, n_heads = self.n_layers, self.n_heads
        for b in range(self.token_ids.shape[0]):
            n = int(self.attention_mask[b].sum())
            layer, head, position = (a.reshape(-1) for a in np.meshgrid(
                np.arange(n_layers, dtype=np.int16), np.arange(n_heads, dtype=np.int16),
                np.arange(n, dtype=np.int32), indexing="ij"))
            tokens = np.asarray(self.real_tokens(b), dtype=object)
            columns = {"batch": np.full(layer.shape, b, dtype=np.int16), "position": position,
                       "token": pa.array(tokens[position]).dictionary_encode(), "layer": layer, "head": head}
            columns |= {name: self.sequence(name, b).float().reshape(-1).numpy() for name in self.token_stats()}
            parts.append(pa.table(columns))
        return pa.concat_tables(parts) if parts else pa.table({})

    def token_table(self) -> pd.DataFrame:
        """Tidy per-token table (batch, position, token, layer, head, metric, value) over real tokens: the long
        form of `token_arrow`, one row per statistic."""
        columns = ["batch", "position", "token", "layer", "head", "metric", "value"]
        if not self.token_stats():
            return pd.DataFrame(columns=columns)
        wide = self.token_arrow().to_pandas()
        wide["token"] = wide["token"].astype(str)
        long = wide.melt(id_vars=columns[:5], value_vars=self.token_stats(), var_name="metric", value_name="value")
        return long[columns].astype({"batch": int, "position": int, "layer": int, "head": int})

    def _repr_html_(self) -> str:
        """Jupyter's view: the run's facts, layer x head maps of the mean statistics, the per-layer summary."""
        from workbench.display import card

        heads = self.head_table()
        maps = {name: rows.pivot(index="layer", columns="head", values="value").to_numpy()
                for name, rows in heads.groupby("metric")
                if name in ("sink_mass", "learned_sink_mass", "entropy", "max_prob")}
        facts = {"model": self.model_id, "sequences": self.token_ids.shape[0],
                 "tokens": int(self.attention_mask.sum()), "layers x heads": f"{self.n_layers} x {self.n_heads}",
                 "statistics": ", ".join(self.stats), "logits": "kept" if self.logits is not None else "not kept"}
        summary = layer_summary(self).rename_axis(columns=None) if not heads.empty else pd.DataFrame()
        return card("Trace", facts, maps, {"per layer": summary} if not summary.empty else None)

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the trace to `directory` (meta.json, tensors.safetensors, heads.parquet and, with statistics,
        tokens.parquet). Returns the path.

        A new or empty folder is written whole and renamed into place, so an interrupted save never leaves a
        half-written trace. A folder that holds anything is refused (OutputExistsError) unless `overwrite`,
        which replaces only the trace's own files and leaves everything else in the folder alone.
        """
        directory = Path(directory)
        with output_folder(directory, overwrite) as tmp:
            tensors = {"token_ids": self.token_ids, "attention_mask": self.attention_mask}
            tensors.update({f"stat.{k}": v for k, v in self.stats.items()})
            tensors.update({f"pattern.{l}.{h}": v for (l, h), v in self.patterns.items()})
            if self.hidden_states is not None:
                tensors["hidden_states"] = self.hidden_states
            if self.logits is not None:
                tensors["logits"] = self.logits
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / "tensors.safetensors")
            meta = {
                "format_version": FORMAT_VERSION, "model_id": self.model_id, "config": self.config,
                "tokens": self.tokens, "pattern_window": self.pattern_window, "options": self.options,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, allow_nan=False))
            self.head_table().to_parquet(tmp / "heads.parquet", index=False)
            if self.token_stats():
                pq.write_table(self.token_arrow(), tmp / TOKENS_FILE, compression="zstd")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Trace:
        """Read a trace written by `save`; tensors come back bit-identical.

        A damaged folder (missing or truncated files, broken or inconsistent meta.json) raises WorkbenchError
        naming the folder and what is wrong.
        """
        directory = Path(directory)
        meta, tensors = _read_meta(directory), _read_tensors(directory)
        _check_consistent(directory, meta, tensors)
        patterns = {}
        for key, value in tensors.items():
            if key.startswith("pattern."):
                _, layer, head = key.split(".")
                patterns[(int(layer), int(head))] = value
        window = meta["pattern_window"]
        return cls(
            model_id=meta["model_id"], config=meta["config"], token_ids=tensors["token_ids"],
            attention_mask=tensors["attention_mask"], tokens=meta["tokens"],
            stats={k[len("stat."):]: v for k, v in tensors.items() if k.startswith("stat.")},
            hidden_states=tensors.get("hidden_states"), logits=tensors.get("logits"), patterns=patterns,
            pattern_window=tuple(window) if window else None, options=meta["options"],
        )


META_KEYS = {"format_version": int, "model_id": str, "config": dict, "tokens": list, "options": dict}


def _read_meta(directory: Path) -> dict:
    path = directory / "meta.json"
    if not directory.is_dir():
        raise WorkbenchError(f"{str(directory)!r} is not a folder (a saved trace is a folder)")
    if not path.is_file():
        raise WorkbenchError(f"{str(directory)!r} is not a saved trace (no meta.json)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WorkbenchError(f"trace {str(directory)!r}: meta.json is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise WorkbenchError(f"trace {str(directory)!r}: meta.json holds {type(meta).__name__}, not an object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise WorkbenchError(f"trace {str(directory)!r}: format {meta.get('format_version')!r} is not "
                             f"{FORMAT_VERSION}")
    for key, kind in META_KEYS.items():
        if not isinstance(meta.get(key), kind):
            raise WorkbenchError(f"trace {str(directory)!r}: meta.json's {key!r} is missing or not a {kind.__name__}")
    for key in ("n_layers", "n_heads"):
        if not isinstance(meta["config"].get(key), int):
            raise WorkbenchError(f"trace {str(directory)!r}: meta.json's config lacks an integer {key!r}")
    window = meta.get("pattern_window")
    if window is not None and not (isinstance(window, list) and len(window) == 2):
        raise WorkbenchError(f"trace {str(directory)!r}: pattern_window {window!r} is not [start, stop]")
    return meta


def _read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / "tensors.safetensors"
    if not path.is_file():
        raise WorkbenchError(f"trace {str(directory)!r} has no tensors.safetensors")
    try:
        return load_file(path)
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError on a short read
        raise WorkbenchError(f"trace {str(directory)!r}: tensors.safetensors is damaged or truncated ({err})") from err


def _check_consistent(directory: Path, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """meta.json and the tensors describe the same run: shapes agree with the token list and the config."""
    def bad(what: str) -> WorkbenchError:
        return WorkbenchError(f"trace {str(directory)!r} is inconsistent: {what}")

    for key in ("token_ids", "attention_mask"):
        if key not in tensors or tensors[key].dim() != 2:
            raise bad(f"{key} is missing or not [batch, positions]")
    batch, length = tensors["token_ids"].shape
    if tensors["attention_mask"].shape != (batch, length):
        raise bad(f"attention_mask {tuple(tensors['attention_mask'].shape)} != token_ids {(batch, length)}")
    if len(meta["tokens"]) != batch or any(len(row) != length for row in meta["tokens"]):
        raise bad(f"meta.json's tokens are not {batch} rows of {length}")
    if "logits" in tensors and tuple(tensors["logits"].shape[:1]) != (batch,):
        raise bad(f"logits {tuple(tensors['logits'].shape)} do not hold {batch} sequences")
    n_layers, n_heads = meta["config"]["n_layers"], meta["config"]["n_heads"]
    blocks = -(-length // int(meta["options"].get("block_size", DEFAULT_BLOCK_SIZE)))
    for key, value in tensors.items():
        if not key.startswith("stat."):
            continue
        want = (n_layers, batch, n_heads) + ((blocks, blocks) if key[len("stat."):] in PER_BLOCK else (length,))
        if tuple(value.shape) != want:
            raise bad(f"{key} has shape {tuple(value.shape)}, expected {want}")


def layer_summary(trace: Trace, sink_threshold: float = 0.3) -> pd.DataFrame:
    """Per-layer means of the head table, plus the share of heads whose sink mass exceeds `sink_threshold`.

    The share is Sink_k^eps of Gu et al. 2024 ("When Attention Sink Emerges in Language Models"), eps = 0.3; with
    learned sinks (learned_sink_mass in the trace) a head's sink mass is its first-token and learned sinks' together.
    Entropy is also given normalized by log(number of visible keys), averaged over real query rows.
    """
    heads = trace.head_table().pivot_table(index=["layer", "head"], columns="metric", values="value")
    summary = heads.groupby(level="layer").mean()
    if "sink_mass" in heads:
        mass = heads["sink_mass"] + heads.get("learned_sink_mass", 0.0)
        summary["sink_heads"] = (mass > sink_threshold).groupby(level="layer").mean()
    if "entropy" in trace.stats:
        summary["entropy_norm"] = normalized_entropy(trace).nanmean(dim=(1, 2, 3)).numpy()
    return summary.reset_index()


def normalized_entropy(trace: Trace) -> torch.Tensor:
    """entropy / log(visible keys) per query row [layer, batch, head, q]; NaN on padding and 1-key rows."""
    rows = []
    for layer in range(trace.n_layers):
        visible = trace.visible_keys(layer).float()
        log_keys = torch.log(visible).where(visible > 1, torch.nan)
        rows.append(trace.stats["entropy"][layer].float() / log_keys[:, None, :])
    return torch.stack(rows)
