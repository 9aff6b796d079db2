"""Griffe extension for the API reference: read the source tree in the layout it is installed in.

pyproject.toml's [tool.setuptools.package-dir] installs the repository's top-level folders kernels/, probes/,
interventions/, dashboards/ and cli/ as workbench.kernels, workbench.probes, ... Griffe reads sources from
disk, where those folders are not inside workbench/, so `::: workbench.kernels` would find nothing. When griffe
visits the `workbench` package, this extension visits each mapped folder (and its subpackages) as the
submodule it becomes once installed, with griffe's public `visit` and the visitor's own parser settings.

The project's docstrings write lists right under the line that introduces them, as plain text reads best;
Markdown needs a blank line there, so the extension adds one when it reads a docstring (the code is unchanged).
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import griffe

ROOT = Path(__file__).resolve().parents[2]
TOP = "workbench"


def package_dirs() -> dict[str, Path]:
    """{submodule name: folder} of every `workbench.NAME` that pyproject.toml maps to a folder of its own."""
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    prefix = f"{TOP}."
    return {name.removeprefix(prefix): ROOT / folder for name, folder in table.items()
            if name.startswith(prefix) and "." not in name.removeprefix(prefix)}


def separate_lists(text: str) -> str:
    """`text` with a blank line before every list that starts right under a line of prose."""
    lines = text.split("\n")
    out = lines[:1]
    for previous, line in zip(lines, lines[1:], strict=False):
        if re.match(r"- ", line) and previous.strip() and not re.match(r"- |\s", previous):
            out.append("")
        out.append(line)
    return "\n".join(out)


class InstalledLayout(griffe.Extension):
    """Attach the folders of `package_dirs()` to the `workbench` module as its submodules; separate lists."""

    def on_instance(self, *, node: ast.AST | griffe.ObjectNode, obj: griffe.Object,
                    agent: griffe.Visitor | griffe.Inspector, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = separate_lists(obj.docstring.value)

    def on_module_members(self, *, node: ast.AST | griffe.ObjectNode, mod: griffe.Module,
                          agent: griffe.Visitor | griffe.Inspector, **kwargs) -> None:
        if mod.path != TOP:
            return
        for name, folder in package_dirs().items():
            if name not in mod.members:
                _visit_package(name, folder, mod, agent)


def _visit_file(name: str, path: Path, parent: griffe.Module, agent) -> griffe.Module:
    code = path.read_text(encoding="utf-8")
    agent.lines_collection[path] = code.splitlines()
    module = griffe.visit(name, path, code, extensions=agent.extensions, parent=parent,
                          docstring_parser=agent.docstring_parser, docstring_options=agent.docstring_options,
                          lines_collection=agent.lines_collection, modules_collection=agent.modules_collection)
    parent.set_member(name, module)
    return module


def _visit_package(name: str, folder: Path, parent: griffe.Module, agent) -> None:
    package = _visit_file(name, folder / "__init__.py", parent, agent)
    for path in sorted(folder.iterdir()):
        if path.suffix == ".py" and path.name != "__init__.py":
            _visit_file(path.stem, path, package, agent)
        elif path.is_dir() and (path / "__init__.py").is_file():
            _visit_package(path.name, path, package, agent)
