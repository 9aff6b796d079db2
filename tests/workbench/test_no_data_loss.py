"""Nothing the user did not ask to replace is deleted; concurrent writers lose no run; damaged traces say so."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from tiny_models import build, token_ids
from typer.testing import CliRunner

import workbench
from workbench.atomic import OutputExistsError, output_folder
from workbench.cli import app
from workbench.errors import WorkbenchError
from workbench.store import Store, StoreBusyError

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    """Messages on one line each, so that paths are not wrapped in the middle."""
    from workbench.cli.common import console

    monkeypatch.setattr(console, "width", 1000)


def canary(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mine.txt"
    path.write_text("the user's own file")
    return path


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


# --- output folders -----------------------------------------------------------------------------------------

def test_output_folder_refuses_a_folder_with_files_and_keeps_them(tmp_path):
    mine = canary(tmp_path / "out")
    with pytest.raises(OutputExistsError, match="--overwrite"), output_folder(tmp_path / "out"):
        pytest.fail("the block must not run")
    assert mine.read_text() == "the user's own file"
    with output_folder(tmp_path / "out", overwrite=True) as staged:
        (staged / "result.txt").write_text("new")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mine.txt", "result.txt"]


def test_output_folder_fails_midway_without_touching_the_destination(tmp_path):
    mine = canary(tmp_path / "out")
    (tmp_path / "out" / "result.txt").write_text("old")
    with pytest.raises(RuntimeError), output_folder(tmp_path / "out", overwrite=True) as staged:
        (staged / "result.txt").write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "out" / "result.txt").read_text() == "old" and mine.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mine.txt", "result.txt"]


def test_trace_out_dot_keeps_the_working_folder(tmp_path, monkeypatch):
    mine = canary(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out = invoke("trace", "--model", "induction-2l", "--text", "a b c", "--out", ".", "--no-store")
    assert code == 2 and "'.' already holds files" in out and "--overwrite" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    code, out = invoke("trace", "--model", "induction-2l", "--text", "a b c", "--out", ".", "--no-store",
                       "--overwrite")
    assert code == 0, out
    assert mine.read_text() == "the user's own file"
    written = {p.name for p in tmp_path.iterdir()}
    assert {"meta.json", "tensors.safetensors", "heads.parquet", "tokens.parquet", "mine.txt"} <= written


def test_every_out_option_refuses_a_folder_with_files(tmp_path):
    out = tmp_path / "out"
    mine = canary(out)
    report = out / "report.html"
    report.write_text("<p>an earlier report</p>")
    commands = [
        ("trace", "--model", "induction-2l", "--text", "a b", "--out", str(out)),
        ("scan", "heads", "--model", "induction-2l", "--length", "4", "--batch", "1", "--out", str(out)),
        ("scan", "retrieval", "--model", "induction-2l", "--out", str(out)),
        ("circuit", "--model", "induction-2l", "--task", "induction", "-n", "2", "--out", str(out)),
        ("compose", "--model", "induction-2l", "--out", str(out)),
        ("search", "--model", "induction-2l", "--task", "induction", "-n", "2", "--out", str(out)),
        ("ablate", "--model", "induction-2l", "--task", "induction", "-n", "2", "--out", str(report)),
    ]
    for command in commands:
        code, said = invoke(*command)
        assert code == 2 and "--overwrite" in said, (command, said)
    assert mine.read_text() == "the user's own file" and report.read_text() == "<p>an earlier report</p>"
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt", "report.html"]
    assert not Path(os.environ["WORKBENCH_STORE"]).exists()  # nothing was run, so nothing stored


def test_report_out_dot_never_touches_the_model_folder(tmp_path, monkeypatch):
    model = tmp_path / "organism"
    mine = canary(model)
    monkeypatch.chdir(tmp_path)
    code, said = invoke("report", "model", "./organism", "--out", ".")
    assert code == 2 and "organism" in said and "--overwrite" in said
    assert sorted(p.name for p in model.iterdir()) == ["mine.txt"] and mine.exists()


def test_unwritable_out_and_store_are_refused_before_the_model_loads(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, said = invoke("trace", "--model", "no-such-model", "--out", str(blocker / "out"))
    assert code == 2 and "is a file, not a folder" in said and "no-such-model" not in said
    code, said = invoke("trace", "--model", "no-such-model", "--out", str(tmp_path / "o"), "--store",
                        str(blocker / "r.duckdb"))
    assert code == 2 and "results store" in said and "no-such-model" not in said
    not_duckdb = tmp_path / "notes.duckdb"
    not_duckdb.write_text("my notes, not a database")
    code, said = invoke("trace", "--model", "no-such-model", "--out", str(tmp_path / "o"), "--store", str(not_duckdb))
    assert code == 2 and "is not a DuckDB file" in said
    assert not_duckdb.read_text() == "my notes, not a database" and not (tmp_path / "o").exists()


# --- options checked before any work --------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "named"), [
    (("trace", "--sink-keys", "-1"), "--sink-keys -1"),
    (("trace", "--sink-keys", "x"), "--sink-keys 'x'"),
    (("trace", "--sink-keys", "9999"), "[9999]"),
    (("trace", "--text", ""), "--text '' is empty"),
    (("circuit", "--task", "induction", "--top-k", "0"), "--top-k"),
    (("circuit", "--task", "induction", "--top-k", "-3"), "--top-k"),
    (("circuit", "--task", "induction", "--max-heads", "0"), "--max-heads"),
    (("circuit", "--task", "induction", "--steps", "0"), "--steps"),
    (("ablate", "--task", "induction", "-n", "0"), "--examples"),
    (("scan", "retrieval", "--depths", "1.5"), "--depths 1.5 is outside [0, 1]"),
    (("scan", "retrieval", "--lengths", "ten"), "--lengths 'ten'"),
])
def test_bad_options_exit_2_naming_the_option_and_write_nothing(tmp_path, args, named):
    out = tmp_path / "out"
    code, said = invoke(*args, "--model", "induction-2l", "--out", str(out / "r.html" if args[0] == "ablate" else out))
    assert code == 2 and named in said, said
    assert not out.exists() and not Path(os.environ["WORKBENCH_STORE"]).exists()


def test_a_task_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    task = tmp_path / "task.jsonl"
    task.write_bytes(b'{"clean": "a b", "corrupted": "b a", "answer": " a", "wrong": " b"}\n{"clean": "\xff"}\n')
    code, said = invoke("ablate", "--model", "induction-2l", "--task", str(task), "--out", str(tmp_path / "r.html"))
    assert code == 2 and "task.jsonl" in said and "line 2" in said and "UTF-8" in said


def test_dash_on_a_busy_port_exits_2_before_starting(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, said = invoke("dash", "--model", "induction-2l", "--port", str(port))
    assert code == 2 and f"127.0.0.1:{port} is in use" in said and "running" not in said


# --- interrupted runs -----------------------------------------------------------------------------------------

def test_ctrl_c_during_a_retrieval_scan_exits_130_stores_nothing_and_resumes(tmp_path):
    out, store = tmp_path / "scan", tmp_path / "r.duckdb"
    command = [sys.executable, "-m", "workbench.cli", "scan", "retrieval", "--model", "organism", "--lengths",
               "128,160,192,224,256", "--depths", "0.5", "--out", str(out), "--store", str(store)]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = out / "needles.jsonl"
    deadline = time.time() + 240
    while not (checkpoint.exists() and checkpoint.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    said, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, said
    assert "interrupted" in said and "resumes" in said
    done = [json.loads(line)["key"] for line in checkpoint.read_text().splitlines()]
    assert 1 <= len(done) < 5
    assert not store.exists() or Store(store).runs().empty
    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    runs = Store(store).runs()
    assert len(runs) == 1 and json.loads(runs.params[0])["retrieval"]["cases"] == 5


# --- Trace.load on damaged folders ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    subject = workbench.load(build("llama"))
    path = tmp_path_factory.mktemp("trace") / "t"
    return workbench.trace(subject, token_ids(1, 9, seed=1).tolist()).save(path)


def damaged(saved: Path, tmp_path: Path, file: str, content: bytes | None) -> Path:
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in saved.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    if content is None:
        (copy / file).unlink()
    else:
        (copy / file).write_bytes(content)
    return copy


@pytest.mark.parametrize(("file", "content", "said"), [
    ("tensors.safetensors", None, "has no tensors.safetensors"),
    ("tensors.safetensors", b"garbage, not tensors", "damaged or truncated"),
    ("meta.json", None, "no meta.json"),
    ("meta.json", b'{"format_version": 1, "model_id": ', "not valid JSON"),
    ("meta.json", b"[1, 2]", "not an object"),
])
def test_damaged_traces_raise_errors_naming_the_folder(saved, tmp_path, file, content, said):
    folder = damaged(saved, tmp_path, file, content)
    with pytest.raises(WorkbenchError, match=said) as err:
        workbench.Trace.load(folder)
    assert str(folder) in str(err.value)


def test_a_truncated_tensor_file_and_an_inconsistent_meta_are_caught(saved, tmp_path):
    data = (saved / "tensors.safetensors").read_bytes()
    folder = damaged(saved, tmp_path, "tensors.safetensors", data[: len(data) // 2])
    with pytest.raises(WorkbenchError, match="damaged or truncated"):
        workbench.Trace.load(folder)
    meta = json.loads((saved / "meta.json").read_text())
    (folder / "tensors.safetensors").write_bytes(data)
    (folder / "meta.json").write_text(json.dumps({**meta, "config": {**meta["config"], "n_heads": 3}}))
    with pytest.raises(WorkbenchError, match=r"inconsistent: stat\.\w+ has shape"):
        workbench.Trace.load(folder)
    (folder / "meta.json").write_text(json.dumps({**meta, "tokens": meta["tokens"][0][:-1]}))
    with pytest.raises(WorkbenchError, match="inconsistent"):
        workbench.Trace.load(folder)


# --- the results store under concurrency ----------------------------------------------------------------------

WRITER = """
import sys, pandas as pd
from workbench.store import Store
path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
heads = pd.DataFrame({"layer": [0] * 64, "head": list(range(64)), "metric": "m", "value": 1.0})
tokens = pd.DataFrame({"batch": 0, "position": range(20000), "token": "t", "layer": 0, "head": 0, "metric": "m",
                       "value": 0.5})
for i in range(n):
    Store(path).write_run("trace", f"{name}-{i}", heads, tokens)
"""

READER = """
import sys, time
from workbench.store import Store
store, seen, partial = Store(sys.argv[1]), 0, 0
end = time.time() + float(sys.argv[2])
while time.time() < end:
    counts = store.query("SELECT r.run_id, (SELECT count(*) FROM token_metrics t WHERE t.run_id = r.run_id) AS n "
                         "FROM runs r")
    partial += int((counts.n != 20000).sum())
    seen = max(seen, len(counts))
print(seen, partial)
"""


def test_three_writer_processes_and_a_reader_lose_no_run(tmp_path):
    path = tmp_path / "shared.duckdb"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{i}", "4"], stderr=subprocess.PIPE,
                                text=True) for i in range(3)]
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path), "8"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    for w in writers:
        assert w.wait(timeout=300) == 0, w.stderr.read()
    out, err = reader.communicate(timeout=300)
    assert reader.returncode == 0, err
    seen, partial = map(int, out.split())
    assert partial == 0 and seen >= 1
    runs = Store(path).runs()
    assert sorted(runs.model_id) == sorted(f"w{i}-{j}" for i in range(3) for j in range(4))


def test_a_notebook_holding_a_store_open_does_not_block_other_writers(tmp_path):
    path = tmp_path / "r.duckdb"
    held = Store(path)  # as a notebook cell would keep it
    held.write_run("trace", "notebook", pd.DataFrame({"layer": [0], "head": [0], "metric": "m", "value": [1.0]}))
    done = subprocess.run([sys.executable, "-c", WRITER, str(path), "cli", "1"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(held.runs().model_id) == ["cli-0", "notebook"]


def test_a_busy_store_gives_a_clear_error_after_the_bounded_wait(tmp_path):
    from filelock import FileLock

    path = tmp_path / "r.duckdb"
    Store(path)
    holder = FileLock(f"{path}.lock")
    with holder:  # another process holds the store (the lock is per open file, so this one waits too)
        with pytest.raises(StoreBusyError, match="busy"):
            Store(path, timeout=0.5).runs()


def test_the_apps_runs_tab_answers_while_a_writer_holds_the_store(tmp_path, monkeypatch):
    from dash import no_update
    from filelock import FileLock

    from workbench.dashboards import session as session_module
    from workbench.dashboards.callbacks import run_options

    path = tmp_path / "r.duckdb"
    Store(path).write_run("trace", "m", pd.DataFrame({"layer": [0], "head": [0], "metric": "m", "value": [1.0]}))
    monkeypatch.setattr(session_module, "READ_TIMEOUT", 0.5)
    session = session_module.Session("induction-2l", path)
    with FileLock(f"{path}.lock"):  # a CLI process writing a long run
        options, info = run_options(session)
    assert options is no_update and "busy" in str(info.children)
    options, info = run_options(session)
    assert len(options) == 1 and info.startswith("1 runs in ")
