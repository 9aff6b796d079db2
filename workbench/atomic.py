"""Write folders all at once, and never delete what the user did not ask to replace.

Everything is built in a staging folder beside its destination and moved into place only when the whole write
succeeded, so an interrupted or failed write leaves nothing half-written.

- `output_folder(dest, overwrite=...)`: a folder the user named (`--out`). A new or empty `dest` becomes the
  staged folder in one rename. A `dest` that holds anything is refused (OutputExistsError) unless `overwrite`;
  then each file the command wrote replaces its namesake (an atomic rename per file) and nothing else in `dest`
  is touched: a model, a store or the user's own files beside it stay.
- `replace_folder(dest)`: a folder the workbench owns (its model cache): replaced whole.
- `check_output(...)`: the same refusal, and a writability check, before any work is done.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from workbench.errors import WorkbenchError


class OutputExistsError(WorkbenchError):
    """An output folder or file that already holds something the command did not write, without --overwrite."""


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def usual_modes(folder: Path) -> None:
    """Give `folder` and everything under it the modes of files made with the user's umask (some writers, such
    as mkdtemp and safetensors, make them private)."""
    umask = _umask()
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def _staged(dest: Path) -> Iterator[Path]:
    """An empty folder beside `dest`, removed if the block fails or is interrupted."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    usual_modes(tmp)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_writable(path: Path, option: str) -> None:
    """Raise WorkbenchError naming `option` when `path` (a file or folder, existing or to be made) cannot be
    written: the folder that would hold it is a file, or no file can be made in it."""
    path = Path(path).absolute()
    folder = path if path.is_dir() else _nearest_existing(path.parent)
    if not folder.is_dir():
        raise WorkbenchError(f"{option} {str(path)!r}: {str(folder)!r} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise WorkbenchError(f"{option} {str(path)!r} is not writable ({err.strerror}: {str(folder)!r})") from err


def check_files(files: Iterable[Path], overwrite: bool, option: str = "--out") -> None:
    """Before any work: refuse output files that are folders, cannot be written, or exist (without `overwrite`)."""
    for file in map(Path, files):
        if file.is_dir():
            raise WorkbenchError(f"{option}: {str(file)!r} is a folder, not a file")
        check_writable(file, option)
        if file.exists() and not overwrite:
            raise OutputExistsError(f"{str(file)!r} exists; choose another {option}, or pass --overwrite to replace it")


def check_output(dest: Path, overwrite: bool, option: str = "--out", files: Iterable[Path] = ()) -> None:
    """Before any work: refuse an output folder `dest` that is a file, that cannot be written, or that already
    holds anything (without `overwrite`); likewise each of `files` (outputs written beside it)."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise WorkbenchError(f"{option} {str(dest)!r} is a file, not a folder")
    check_writable(dest, option)
    if not overwrite and dest.is_dir() and any(dest.iterdir()):
        raise OutputExistsError(
            f"{option} {str(dest)!r} already holds files; choose a new or empty folder, or pass --overwrite to "
            "replace only the files this command writes there")
    check_files(files, overwrite, option)


@contextlib.contextmanager
def output_folder(dest: str | Path, overwrite: bool = False, option: str = "--out") -> Iterator[Path]:
    """Yield an empty staging folder; when the block succeeds its files land in `dest` (see the module
    docstring), when it fails `dest` is left exactly as it was."""
    dest = Path(dest).absolute()
    check_output(dest, overwrite, option)
    if not dest.exists():
        with _staged(dest) as tmp:
            yield tmp
        os.replace(tmp, dest)
        return
    with _staged(dest / ".workbench-staging") as tmp:  # inside dest: its parent may not be ours to write
        yield tmp
    try:
        for path in sorted(p for p in tmp.rglob("*") if not p.is_dir()):
            target = dest / path.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_file(path: Path, write) -> Path:
    """Call write(tmp) on a temporary file beside `path`, then rename it onto `path` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def replace_folder(dest: Path) -> Iterator[Path]:
    """Yield an empty staging folder that replaces `dest` whole when the block succeeds. Only for folders the
    workbench owns (its model cache), never for a folder the user named."""
    with _staged(dest) as tmp:
        yield tmp
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
