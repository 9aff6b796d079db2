"""The results store: one DuckDB file that the CLI report, the Dash app and notebooks all read and write.

Tables, one row per (run, layer, head, metric) and per (run, token, layer, head, metric):
    runs(run_id, created, kind, model_id, command, params, trace_dir, token_file)
    head_metrics(run_id, layer, head, metric, value)
    token_metrics(run_id, batch, position, token, layer, head, metric, value)
Per-token statistics are large (17.7M rows for SmolLM2 at 8k tokens): a traced run keeps them in the Trace's
tokens.parquet (`token_file`, one column per statistic) and DuckDB reads that file in place; `token_metrics`
serves runs written with a table of rows.

Any number of processes may write and read one store at once, and no run is ever lost. DuckDB lets one
process at a time open a file for writing (and none read it meanwhile), so nothing keeps the file open: every
read and every write opens its own short connection while holding an exclusive lock on PATH.lock (a file lock
of the operating system, released when the process dies), and waits for the lock up to `timeout` seconds
(StoreBusyError after that, naming the store; nothing is written). Each run is written in one transaction, so a
reader sees a run whole or not at all, and a failure or interruption midway leaves no trace of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
from filelock import FileLock, Timeout
from platformdirs import user_data_dir

from workbench.atomic import check_writable
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
ALTER TABLE runs ADD COLUMN IF NOT EXISTS token_file VARCHAR;
"""
RUN_COLUMNS = "run_id, created, kind, model_id, command, params, trace_dir, token_file"
TOKEN_KEYS = ("batch", "position", "token", "layer", "head")  # the per-token file's columns that are no statistic
HEAD_COLUMNS = ["layer", "head", "metric", "value"]
TOKEN_COLUMNS = ["batch", "position", "token", "layer", "head", "metric", "value"]
DUCKDB_MAGIC = b"DUCK"  # bytes 8-11 of every DuckDB database file
TIMEOUT = 120.0  # seconds a read or write waits for another process's write


class StoreBusyError(WorkbenchError):
    """Another process held the store for longer than the wait allowed."""


def default_path() -> Path:
    """$WORKBENCH_STORE, else results.duckdb in the user's data directory."""
    env = os.environ.get("WORKBENCH_STORE")
    return Path(env) if env else Path(user_data_dir("attention-workbench")) / "results.duckdb"


class Store:
    """The DuckDB results store at `path` (default: `default_path()`), created on first use.

    Opening it checks that the file is a DuckDB store (or can be created) and writable; it holds no connection,
    so a notebook or the app may keep a Store for as long as it likes without blocking other processes.
    """

    def __init__(self, path: str | Path | None = None, timeout: float = TIMEOUT) -> None:
        self.path = check(path)
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(f"{self.path}.lock", timeout=timeout)
        with self._connect() as con:
            con.execute(SCHEMA)

    def close(self) -> None:
        """Nothing to release (connections live only for one read or write); kept for `with Store() as s`."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection of its own, under the store's lock, closed (and the lock released) afterwards."""
        try:
            self._lock.acquire()
        except Timeout as err:
            raise StoreBusyError(f"results store {str(self.path)!r} is busy: another process held it for over "
                                 f"{self.timeout:g} s") from err
        try:
            try:
                con = duckdb.connect(str(self.path))
            except duckdb.Error as err:
                raise WorkbenchError(f"results store {str(self.path)!r} is not a DuckDB file that can be opened "
                                     f"for writing ({err})") from err
            try:
                yield con
            finally:
                con.close()
        finally:
            self._lock.release()

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
        token_file: str | Path | None = None,
    ) -> str:
        """Write one run and its tables in a single transaction; return its run_id.

        Per-token statistics come either as `token_metrics` rows or, for large runs, as `token_file`: a Parquet
        file written by `Trace.save` (tokens.parquet) that the store reads in place and never copies.
        """
        _check_columns("head_metrics", head_metrics, HEAD_COLUMNS)
        if token_file is not None:
            if token_metrics is not None:
                raise WorkbenchError("give token_metrics or token_file, not both")
            token_file = Path(token_file).resolve()
            if not token_file.is_file():
                raise WorkbenchError(f"token_file {str(token_file)!r} does not exist")
        if token_metrics is not None:
            _check_columns("token_metrics", token_metrics, TOKEN_COLUMNS)
        run_id = uuid.uuid4().hex[:12]
        with self._connect() as con:
            con.begin()
            try:
                con.execute(
                    f"INSERT INTO runs ({RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [run_id, datetime.now(UTC).replace(tzinfo=None), kind, model_id, command,
                     json.dumps(params or {}), None if trace_dir is None else str(trace_dir),
                     None if token_file is None else str(token_file)],
                )
                _insert(con, "head_metrics", run_id, head_metrics[HEAD_COLUMNS])
                if token_metrics is not None:
                    _insert(con, "token_metrics", run_id, token_metrics[TOKEN_COLUMNS])
                con.commit()
            except BaseException:
                con.rollback()
                raise
        return run_id

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """Run one SQL query on the store (under its lock) and return the result as a DataFrame."""
        with self._connect() as con:
            return con.execute(sql, params or []).df()

    def runs(self) -> pd.DataFrame:
        """All runs, newest first."""
        return self.query("SELECT * FROM runs ORDER BY created DESC")

    def head_metrics(self, run_id: str) -> pd.DataFrame:
        """The per-head table of run `run_id` (layer, head, metric, value)."""
        self._check_run(run_id)
        return self.query(
            "SELECT layer, head, metric, value FROM head_metrics WHERE run_id = ? ORDER BY metric, layer, head",
            [run_id])

    def token_metrics(self, run_id: str) -> pd.DataFrame:
        """The per-token table of run `run_id` (batch, position, token, layer, head, metric, value), from its
        Parquet file when it has one."""
        token_file = self.token_file(run_id)
        order = "ORDER BY metric, batch, layer, head, position"
        if token_file is None:
            return self.query("SELECT batch, position, token, layer, head, metric, value FROM token_metrics "
                              f"WHERE run_id = ? {order}", [run_id])
        keys = ", ".join(TOKEN_KEYS)
        return self.query(
            f"SELECT batch, position, token::VARCHAR AS token, layer, head, metric, value FROM (UNPIVOT "
            f"(SELECT * FROM read_parquet({_literal(token_file)})) ON COLUMNS(* EXCLUDE ({keys})) "
            f"INTO NAME metric VALUE value) {order}")

    def token_file(self, run_id: str) -> Path | None:
        """The Parquet file of run `run_id`'s per-token statistics (None when they are rows of token_metrics);
        query it in place, e.g. store.query(f"SELECT ... FROM read_parquet('{path}')")."""
        self._check_run(run_id)
        found = self.query("SELECT token_file FROM runs WHERE run_id = ?", [run_id]).token_file[0]
        if found is None or pd.isna(found):
            return None
        if not Path(found).is_file():
            raise WorkbenchError(f"run {run_id!r}'s per-token file {found!r} is gone (its trace folder was moved "
                                 "or deleted)")
        return Path(found)

    def _check_run(self, run_id: str) -> None:
        if self.query("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).empty:
            raise WorkbenchError(f"no run {run_id!r} in the store {str(self.path)!r}")


def check(path: str | Path | None = None) -> Path:
    """The store's path (default: `default_path()`) once it is known to be usable, creating nothing: a DuckDB
    file, or a new file in a folder that can be written. WorkbenchError naming the path otherwise."""
    path = Path(path) if path is not None else default_path()
    if path.exists() and not path.is_file():
        raise WorkbenchError(f"results store {str(path)!r} is a folder, not a DuckDB file")
    check_writable(path, "results store")
    if path.is_file() and path.stat().st_size and _header(path) != DUCKDB_MAGIC:
        raise WorkbenchError(f"results store {str(path)!r} is not a DuckDB file; name a new file or a store "
                             "written by the workbench")
    return path


def _literal(path: Path) -> str:
    """`path` as a quoted SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def _header(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(12)[8:]


def _insert(con: duckdb.DuckDBPyConnection, table: str, run_id: str, frame: pd.DataFrame) -> None:
    con.register("_incoming", frame)
    try:
        con.execute(f"INSERT INTO {table} SELECT ? AS run_id, * FROM _incoming", [run_id])
    finally:
        con.unregister("_incoming")


def _check_columns(table: str, frame: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise WorkbenchError(f"{table} lacks column(s) {missing}; expected {columns}")
