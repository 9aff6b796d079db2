"""One import name: the installed distribution claims `workbench` only, beside Hugging Face's `kernels`."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("kernels", "probes", "interventions", "dashboards", "cli")  # installed as workbench.<folder>
LOWER_FLOORS = ("workbench.probes", "workbench.interventions", "workbench.dashboards", "workbench.cli")


def _run(code: str, cwd: Path) -> str:
    """Run `code` in a fresh interpreter outside the repository (so the checkout is not on sys.path)."""
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_the_wheel_installs_one_top_level_package(tmp_path):
    """A regular (not editable) install, built from a copy of the tracked files (the build leaves the checkout
    alone)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    source = tmp_path / "source"
    for name in tracked.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("attention_workbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"workbench"}
    for folder in FOLDERS:
        assert f"workbench/{folder}/__init__.py" in names
    assert "workbench/probes/circuits/__init__.py" in names
    assert any(n.startswith("workbench/zoo/organism/") and n.endswith(".safetensors") for n in names)


def test_hugging_face_kernels_and_workbench_kernels_live_side_by_side(tmp_path):
    """HF's `kernels` (transformers' hub-kernel package) imports as itself and transformers finds it.

    transformers 5.x accepts only a window of `kernels` versions for `use_kernels=True`; the check passes that
    window the installed version, so it tests that the name is not shadowed, not which version PyPI serves."""
    pytest.importorskip("kernels")
    out = _run(
        "import importlib.metadata as md, kernels, workbench.kernels\n"
        "from transformers.utils.import_utils import is_kernels_available\n"
        "v = md.version('kernels')\n"
        "print(hasattr(kernels, 'get_kernel'), 'site-packages' in kernels.__file__,\n"
        "      workbench.kernels.attention.__module__, is_kernels_available(v, '999'))", tmp_path)
    assert out == "True True workbench.kernels True"


def test_python_started_in_the_checkout_finds_hugging_face_kernels():
    """From the repository root (on sys.path as '' for `python -c` and `python -m`), `kernels` would be the folder
    kernels/; importing workbench hands the name to Hugging Face's package first, so transformers starts."""
    pytest.importorskip("kernels")
    out = _run("import workbench, kernels, transformers.modeling_utils\n"
               "print('site-packages' in kernels.__file__, hasattr(kernels, 'get_kernel'))", ROOT)
    assert out == "True True"


def test_no_module_imports_the_folders_as_top_level_packages():
    offenders = []
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts or "build" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in FOLDERS]
    assert offenders == []


def test_the_core_and_the_zoo_import_no_analyzer(tmp_path):
    """The arrows go one way: command line -> probes, interventions -> core -> kernels."""
    out = _run(
        "import sys, workbench, workbench.tracer, workbench.store, workbench.zoo.organism, workbench.zoo.induction\n"
        f"print(sorted(m for m in sys.modules if m.startswith({LOWER_FLOORS!r})))", tmp_path)
    assert out == "[]"
