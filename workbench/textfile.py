"""Reading a user's text file, with an error that names the file and the line when it is not UTF-8."""

from __future__ import annotations

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
