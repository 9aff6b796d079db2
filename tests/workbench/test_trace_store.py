"""Trace save/load round trip, the tidy tables, and the DuckDB results store's all-or-nothing writes."""

import duckdb
import pandas as pd
import pytest
import torch
from tiny_models import build, token_ids

import workbench
import workbench.store
from workbench.atomic import OutputExistsError, _umask
from workbench.errors import WorkbenchError
from workbench.store import Store


@pytest.fixture(scope="module")
def trace():
    subject = workbench.load(build("llama"))
    ids = token_ids(2, 14, seed=2)
    # two sequences of 14 and 11 tokens: the second is right-padded by 3
    return workbench.trace(subject, [ids[0].tolist(), ids[1, 3:].tolist()], patterns=[(1, 2)], hidden_states=True)


def test_round_trip_is_bit_identical(trace, tmp_path):
    path = trace.save(tmp_path / "t")
    back = workbench.Trace.load(path)
    assert back.model_id == trace.model_id and back.tokens == trace.tokens and back.config == trace.config
    assert back.options == trace.options and back.pattern_window == trace.pattern_window
    assert torch.equal(back.token_ids, trace.token_ids) and torch.equal(back.attention_mask, trace.attention_mask)
    assert back.stats.keys() == trace.stats.keys()
    for name in trace.stats:
        assert torch.equal(back.stats[name], trace.stats[name]) or torch.equal(
            back.stats[name].isnan(), trace.stats[name].isnan()) and torch.equal(
            back.stats[name].nan_to_num(), trace.stats[name].nan_to_num())
    assert torch.equal(back.hidden_states, trace.hidden_states)
    assert back.patterns.keys() == trace.patterns.keys()
    assert torch.equal(back.patterns[(1, 2)], trace.patterns[(1, 2)])
    pd.testing.assert_frame_equal(pd.read_parquet(path / "heads.parquet"), trace.head_table())
    with pytest.raises(OutputExistsError, match="--overwrite"):
        trace.save(path)  # a folder that holds files is never written over unasked
    (path / "notes.txt").write_text("mine")
    trace.save(path, overwrite=True)  # replaces the trace's own files, keeps the rest
    assert sorted(p.name for p in path.iterdir()) == ["heads.parquet", "meta.json", "notes.txt",
                                                      "tensors.safetensors", "tokens.parquet"]
    assert {oct(p.stat().st_mode & 0o777) for p in path.iterdir()} == {oct(0o666 & ~_umask())}


def test_head_table_is_the_mean_over_real_tokens(trace):
    table = trace.head_table()
    assert list(table.columns) == ["layer", "head", "metric", "value"]
    assert set(table.metric) == {"entropy", "sink_mass", "max_prob", "lse", "window_distance", "self_mass"}
    row = table[(table.layer == 1) & (table["head"] == 3) & (table.metric == "entropy")].value.item()
    real = torch.cat([trace.sequence("entropy", 0)[1, 3], trace.sequence("entropy", 1)[1, 3]])
    assert row == pytest.approx(float(real.double().mean()), rel=1e-6)


def test_token_table_skips_padding(trace):
    table = trace.token_table()
    n_real = int(trace.attention_mask.sum())
    assert len(table) == n_real * 2 * 4 * len(trace.stats)
    assert not table.value[table.metric == "entropy"].isna().any()
    first = table[(table.batch == 1) & (table.position == 0) & (table.metric == "sink_mass")]
    assert (first.value == 1.0).all()  # the first real token attends only to itself
    assert first.token.iloc[0] == trace.tokens[1][0]
    assert trace.attention_mask[1].tolist() == [True] * 11 + [False] * 3


def test_per_token_statistics_are_read_in_place_from_the_traces_parquet(trace, tmp_path):
    """A run that names its Trace's tokens.parquet gives the same per-token rows as one written row by row, and
    the store file holds none of them."""
    folder = trace.save(tmp_path / "t")
    path = tmp_path / "r.duckdb"
    with Store(path) as store:
        run = store.write_run("trace", trace.model_id, trace.head_table(), trace_dir=folder,
                              token_file=folder / "tokens.parquet")
        key = ["metric", "batch", "layer", "head", "position"]
        got = store.token_metrics(run).sort_values(key).reset_index(drop=True)
        want = trace.token_table().sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
        assert store.token_file(run) == (folder / "tokens.parquet").resolve()
        assert store.query("SELECT count(*) AS n FROM token_metrics").n[0] == 0
        (folder / "tokens.parquet").unlink()
        with pytest.raises(WorkbenchError, match="is gone"):
            store.token_metrics(run)


def test_load_rejects_a_folder_that_is_not_a_trace(tmp_path):
    with pytest.raises(WorkbenchError, match="not a saved trace"):
        workbench.Trace.load(tmp_path)


def test_store_writes_and_reads_runs(trace, tmp_path):
    with Store(tmp_path / "r.duckdb") as store:
        run = store.write_run("trace", trace.model_id, trace.head_table(), trace.token_table(),
                              command="workbench trace", params={"n": 1})
        assert store.runs().run_id.tolist() == [run]
        heads = store.head_metrics(run)
        pd.testing.assert_frame_equal(
            heads.sort_values(["metric", "layer", "head"]).reset_index(drop=True),
            trace.head_table().sort_values(["metric", "layer", "head"]).reset_index(drop=True),
            check_dtype=False)
        assert len(store.token_metrics(run)) == len(trace.token_table())
        with pytest.raises(WorkbenchError, match="no run 'nope'"):
            store.head_metrics("nope")


def test_a_write_that_fails_midway_leaves_no_partial_run(trace, tmp_path, monkeypatch):
    path = tmp_path / "r.duckdb"
    with Store(path) as store:
        store.write_run("trace", "first", trace.head_table())
        original = workbench.store._insert

        def failing(con, table, run_id, frame):
            if table == "token_metrics":
                raise RuntimeError("disk full")
            original(con, table, run_id, frame)

        monkeypatch.setattr(workbench.store, "_insert", failing)
        with pytest.raises(RuntimeError, match="disk full"):
            store.write_run("trace", "second", trace.head_table(), trace.token_table())
    con = duckdb.connect(str(path))
    assert con.execute("SELECT model_id FROM runs").fetchall() == [("first",)]
    n_heads = con.execute("SELECT count(*) FROM head_metrics").fetchone()[0]
    assert n_heads == len(trace.head_table())
    assert con.execute("SELECT count(*) FROM token_metrics").fetchone()[0] == 0


def test_store_rejects_tables_without_the_contract_columns(tmp_path):
    with Store(tmp_path / "r.duckdb") as store:
        with pytest.raises(WorkbenchError, match=r"lacks column\(s\) \['metric'\]"):
            store.write_run("trace", "m", pd.DataFrame({"layer": [0], "head": [0], "value": [1.0]}))
        assert store.runs().empty


def test_block_statistics_are_traced_saved_and_loaded(tmp_path):
    """block_mass / block_max come out [layer, batch, head, q_blocks, k_blocks], padding-invariant (blocks count
    from each sequence's first real token), and round-trip bit for bit beside the per-token statistics."""
    subject = workbench.load("organism")  # a context of 2048 tokens
    ids = token_ids(2, 150, seed=3)
    stats = ("entropy", "block_mass", "block_max")
    traced = workbench.trace(subject, [ids[0].tolist(), ids[1, 30:].tolist()], stats=stats, block_size=64)
    n_layers, n_heads = traced.n_layers, traced.n_heads
    assert traced.stats["block_mass"].shape == (n_layers, 2, n_heads, 3, 3) and traced.block_size == 64
    alone = workbench.trace(subject, [ids[1, 30:].tolist()], stats=stats, block_size=64)
    torch.testing.assert_close(traced.sequence("block_mass", 1), alone.sequence("block_mass"), atol=1e-5, rtol=1e-5)
    assert traced.sequence("block_mass", 1).shape == (n_layers, n_heads, 2, 2)
    rows = traced.sequence("block_mass", 0).sum(-1)  # each query block's row sums to its number of queries
    torch.testing.assert_close(rows, torch.tensor([64.0, 64.0, 22.0]).expand_as(rows), atol=1e-3, rtol=0)
    back = workbench.Trace.load(traced.save(tmp_path / "t"))
    assert back.options["block_size"] == 64 and sorted(back.token_stats()) == ["entropy"]
    for name in stats:
        assert torch.equal(back.stats[name].nan_to_num(), traced.stats[name].nan_to_num())
    assert set(back.head_table().metric) == {"entropy"} and set(back.token_table().metric) == {"entropy"}
    with pytest.raises(WorkbenchError, match="block_size 32 must be an integer from 64 to 1024"):
        workbench.trace(subject, [ids[0].tolist()], stats=stats, block_size=32)
    with pytest.raises(WorkbenchError, match="distance_cap 0 must be a positive integer"):
        workbench.trace(subject, [ids[0].tolist()], stats=("window_distance",), distance_cap=0)
