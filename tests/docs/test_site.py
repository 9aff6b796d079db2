"""The documentation site builds with `mkdocs build --strict` (no warning: no broken link, page, anchor or
docstring), offline, and holds the pages a reader expects: home, the API reference, a notebook, a findings page."""

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def page(site: Path, path: str) -> str:
    file = site / path / "index.html"
    assert file.is_file(), f"{path} was not built"
    return file.read_text(encoding="utf-8")


def test_home_and_guides(site):
    assert "One import name" in page(site, "")
    for path in ("getting-started", "guides/probes", "guides/interventions", "guides/circuits", "guides/app",
                 "guides/findings", "kernels", "benchmarks/NOTES"):
        page(site, path)


def test_api_reference_is_generated_from_docstrings(site):
    kernels = page(site, "reference/kernels")
    for anchor in ("workbench.kernels.attention", "workbench.kernels.contract.HeadEdits",
                   "workbench.kernels.reference"):
        assert f'id="{anchor}"' in kernels, anchor
    assert "Attention output [B, Hq, Lq, Dv]" in kernels  # the docstring of workbench.kernels.attention
    for path, anchor in (("reference/workbench", "workbench.loading.load"),
                         ("reference/probes", "workbench.probes.sinks.sink_scores"),
                         ("reference/circuits", "workbench.probes.circuits.discover.find_circuit"),
                         ("reference/interventions", "workbench.interventions.heads.ablate"),
                         ("reference/store", "workbench.store.Store"),
                         ("reference/trace", "workbench.trace.Trace")):
        assert f'id="{anchor}"' in page(site, path), anchor


def test_notebooks_are_rendered(site):
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        html = page(site, f"notebooks/{notebook.stem}")
        assert "jp-Notebook" in html or "jupyter-wrapper" in html, notebook.name
    assert "Attention sinks and entropy across layers" in page(site, "notebooks/01_sinks_and_entropy")


def test_findings_pages_with_their_figures(site):
    for model in ("smollm2-135m", "gemma3-270m"):
        html = page(site, f"models/{model}")  # models/NAME/index.html, beside the page's figures
        for figure in ("sinks", "entropy", "erank", "induction", "retrieval"):
            assert f'src="{figure}.png"' in html, (model, figure)
            assert (site / "models" / model / f"{figure}.png").is_file(), (model, figure)


def test_every_internal_link_resolves(site):
    """Strict mode checks the links of Markdown pages; this also covers what it does not see (rendered
    notebooks, docstrings, the theme)."""
    broken = []
    for html_file in site.rglob("*.html"):
        if html_file.name == "404.html":  # served for any missing URL, so its links are absolute by design
            continue
        for href in re.findall(r'(?:href|src)="([^"]+)"', html_file.read_text(encoding="utf-8")):
            parts = urlsplit(href)
            if parts.scheme or parts.netloc or href.startswith(("#", "mailto:", "data:")):
                continue
            target = (html_file.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{html_file.relative_to(site)}: {href}")
    assert not broken, broken[:20]
