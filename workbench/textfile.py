"""Reading a user's text file (or JSONL file), with an error that names the file and the line where it is bad."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from workbench.errors import WorkbenchError


def read_utf8(path: Path, what: str) -> str:
    """The UTF-8 text of `path`; WorkbenchError naming `what`, the file and the first bad line otherwise."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise WorkbenchError(f"{what} {str(path)!r} is not UTF-8 text (line {line}: {err.reason})") from err


def json_lines(path: Path, what: str, error: type[WorkbenchError] = WorkbenchError) -> Iterator[tuple[str, object]]:
    """(where, value) for each non-blank line of the JSONL file `path`, where = "path:line"; `error` naming `what`
    and the file when it does not exist, the file and line when a line is not JSON."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {str(path)!r} does not exist")
    for number, line in enumerate(read_utf8(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as err:
            raise error(f"{where}: not valid JSON ({err.msg})") from err
