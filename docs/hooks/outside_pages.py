"""MkDocs hook: pages whose source lives outside docs/, added to the site from where they are in the repository.

The notebooks stay in notebooks/ (the test suite executes them there) and the benchmark notes and results stay
in benchmarks/ (the benchmark script writes them there). Rather than copy them into docs/ or link them with
symlinks, this hook adds each file to the site's files under the same relative path (notebooks/NAME.ipynb,
benchmarks/NOTES.md, benchmarks/results/NAME.md or .json); mkdocs-jupyter then renders the notebooks, and
pages link to them as if they were in docs/.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = ("notebooks/*.ipynb", "benchmarks/NOTES.md", "benchmarks/results/*.md", "benchmarks/results/*.json")


def outside_files() -> list[Path]:
    """The repository files (outside docs/) that the site includes, in a stable order."""
    return sorted(path for pattern in OUTSIDE for path in ROOT.glob(pattern))


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns the .ipynb files it is given into pages
def on_files(files: Files, config) -> Files:
    for path in outside_files():
        uri = path.relative_to(ROOT).as_posix()
        if files.get_file_from_path(uri) is not None:
            raise ValueError(f"{uri} exists both in docs/ and in the repository root; keep one")
        # A plain File whose source folder is the repository root (not File.generated: mkdocs-jupyter's
        # notebook pages read their source through attributes that only plain files set).
        files.append(File(uri, src_dir=str(ROOT), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    return files
