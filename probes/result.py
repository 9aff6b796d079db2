"""The Result every probe returns: a tidy table plus the raw arrays it was computed from.

`table` has one row per finding: columns `layer`, `head`, `metric`, `value` (and `position` / `token`
where a finding is about a token, `case` / `document` where it is about a re-ranked document, `other_layer`
where it is about a pair of layers, `kept_fraction` where it is about one sparsity budget). Layer-level rows carry
head = -1; model-level rows layer = -1 too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

LAYER_LEVEL = -1  # the `head` (and for model-level rows also `layer`) of rows that are not about one head
# rows with one of these set are about a token, a document, a pair of layers or a sweep's budget, not a head
ITEM_COLUMNS = ("position", "document", "other_layer", "kept_fraction")


def _per_item(rows: pd.DataFrame) -> pd.Series:
    """True for the rows about one token, document, layer pair or budget (the store's head_metrics table leaves
    them out)."""
    item = pd.Series(False, index=rows.index)
    for column in ITEM_COLUMNS:
        if column in rows:
            item |= rows[column].notna()
    return item


@dataclass
class Result:
    """A probe's findings: `table` (tidy DataFrame), `arrays` (raw numpy arrays by name), `params` (options)."""

    probe: str
    table: pd.DataFrame
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def metric(self, name: str) -> pd.DataFrame:
        """The rows of one metric."""
        return self.table[self.table.metric == name].reset_index(drop=True)

    def top(self, name: str, k: int = 10, largest: bool = True) -> pd.DataFrame:
        """The k per-head rows with the largest (or smallest) value of metric `name`."""
        rows = self.metric(name)
        rows = rows[rows["head"] != LAYER_LEVEL]
        return (rows.nlargest(k, "value") if largest else rows.nsmallest(k, "value")).reset_index(drop=True)

    def head_matrix(self, name: str) -> np.ndarray:
        """Metric `name` as a [layer, head] array (NaN where a head has no row)."""
        rows = self.metric(name)
        rows = rows[rows["head"] != LAYER_LEVEL]
        out = np.full((int(rows.layer.max()) + 1, int(rows["head"].max()) + 1), np.nan)
        out[rows.layer.to_numpy(int), rows["head"].to_numpy(int)] = rows.value.to_numpy(float)
        return out

    def head_metrics(self) -> pd.DataFrame:
        """The rows that fit the store's head_metrics table (layer, head, metric, value)."""
        rows = self.table[~_per_item(self.table)]
        return rows[["layer", "head", "metric", "value"]].reset_index(drop=True)

    def _repr_html_(self) -> str:
        """Jupyter's view: the probe's options, a layer x head map of each per-head metric, its top heads."""
        from workbench.display import card

        per_head = self.table[(self.table["head"] != LAYER_LEVEL) & ~_per_item(self.table)]
        metrics = list(dict.fromkeys(per_head.metric))
        maps = {name: self.head_matrix(name) for name in metrics[:4]}
        tables = {f"top heads by {name}": self.top(name, 5)[["layer", "head", "value"]] for name in metrics[:2]}
        if not metrics:
            tables = {"findings": self.table.head(12)}
        return card(self.probe, {k: v for k, v in self.params.items() if not isinstance(v, (list, dict))},
                    maps, tables)

    def save(self, directory: str | Path) -> Path:
        """Write table.parquet and arrays.npz into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.table.to_parquet(directory / f"{self.probe}.parquet", index=False)
        if self.arrays:
            np.savez_compressed(directory / f"{self.probe}_arrays.npz", **self.arrays)
        return directory


def head_rows(values: np.ndarray, metric: str) -> pd.DataFrame:
    """Tidy rows (layer, head, metric, value) from a [layer, head] array."""
    layers, heads = np.indices(values.shape)
    return pd.DataFrame({"layer": layers.ravel(), "head": heads.ravel(), "metric": metric,
                         "value": values.astype(float).ravel()})


def layer_rows(values: np.ndarray, metric: str) -> pd.DataFrame:
    """Tidy layer-level rows (head = -1) from a [layer] array."""
    return pd.DataFrame({"layer": np.arange(len(values)), "head": LAYER_LEVEL, "metric": metric,
                         "value": values.astype(float)})
