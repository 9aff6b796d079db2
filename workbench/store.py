"""The results store: one DuckDB file that the CLI report, the Dash app and notebooks all read.

Tables, one row per (run, layer, head, metric) and per (run, token, layer, head, metric):
    runs(run_id, created, kind, model_id, command, params, trace_dir)
    head_metrics(run_id, layer, head, metric, value)
    token_metrics(run_id, batch, position, token, layer, head, metric, value)
Each run is written in one transaction: a failure midway leaves no trace of the run.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
from platformdirs import user_data_dir

from workbench.errors import WorkbenchError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, created TIMESTAMP, kind VARCHAR, model_id VARCHAR,
    command VARCHAR, params JSON, trace_dir VARCHAR);
CREATE TABLE IF NOT EXISTS head_metrics (
    run_id VARCHAR, layer INTEGER, head INTEGER, metric VARCHAR, value DOUBLE);
CREATE TABLE IF NOT EXISTS token_metrics (
    run_id VARCHAR, batch INTEGER, position INTEGER, token VARCHAR,
    layer INTEGER, head INTEGER, metric VARCHAR, value DOUBLE);
"""
HEAD_COLUMNS = ["layer", "head", "metric", "value"]
TOKEN_COLUMNS = ["batch", "position", "token", "layer", "head", "metric", "value"]


def default_path() -> Path:
    """$WORKBENCH_STORE, else results.duckdb in the user's data directory."""
    env = os.environ.get("WORKBENCH_STORE")
    return Path(env) if env else Path(user_data_dir("attention-workbench")) / "results.duckdb"


class Store:
    """A DuckDB results store at `path` (default: `default_path()`), created on first use."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = duckdb.connect(str(self.path))
        self._con.execute(SCHEMA)

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write_run(
        self,
        kind: str,
        model_id: str,
        head_metrics: pd.DataFrame,
        token_metrics: pd.DataFrame | None = None,
        *,
        command: str = "",
        params: dict | None = None,
        trace_dir: str | Path | None = None,
    ) -> str:
        """Write one run and its tables in a single transaction; return its run_id."""
        _check_columns("head_metrics", head_metrics, HEAD_COLUMNS)
        if token_metrics is not None:
            _check_columns("token_metrics", token_metrics, TOKEN_COLUMNS)
        run_id = uuid.uuid4().hex[:12]
        con = self._con
        con.begin()
        try:
            con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                [run_id, datetime.now(UTC).replace(tzinfo=None), kind, model_id, command,
                 json.dumps(params or {}), None if trace_dir is None else str(trace_dir)],
            )
            self._insert("head_metrics", run_id, head_metrics[HEAD_COLUMNS])
            if token_metrics is not None:
                self._insert("token_metrics", run_id, token_metrics[TOKEN_COLUMNS])
            con.commit()
        except BaseException:
            con.rollback()
            raise
        return run_id

    def _insert(self, table: str, run_id: str, frame: pd.DataFrame) -> None:
        self._con.register("_incoming", frame)
        try:
            self._con.execute(f"INSERT INTO {table} SELECT ? AS run_id, * FROM _incoming", [run_id])
        finally:
            self._con.unregister("_incoming")

    def runs(self) -> pd.DataFrame:
        """All runs, newest first."""
        return self._con.execute("SELECT * FROM runs ORDER BY created DESC").df()

    def head_metrics(self, run_id: str) -> pd.DataFrame:
        """The per-head table of run `run_id` (layer, head, metric, value)."""
        self._check_run(run_id)
        return self._con.execute(
            "SELECT layer, head, metric, value FROM head_metrics WHERE run_id = ? ORDER BY metric, layer, head",
            [run_id]).df()

    def token_metrics(self, run_id: str) -> pd.DataFrame:
        """The per-token table of run `run_id`."""
        self._check_run(run_id)
        return self._con.execute(
            "SELECT batch, position, token, layer, head, metric, value FROM token_metrics WHERE run_id = ? "
            "ORDER BY metric, batch, layer, head, position", [run_id]).df()

    def _check_run(self, run_id: str) -> None:
        if not self._con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone():
            raise WorkbenchError(f"no run {run_id!r} in the store {str(self.path)!r}")


def _check_columns(table: str, frame: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise WorkbenchError(f"{table} lacks column(s) {missing}; expected {columns}")
