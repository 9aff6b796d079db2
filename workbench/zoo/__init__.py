"""The embedded reference models: small models trained by this project with mechanisms known by construction.

Each model is a Hugging Face folder beside this file (config.json, model.safetensors, tokenizer files,
MODEL_CARD.md); `python -m workbench.zoo.train NAME` rebuilds it from a seed.
"""

from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    """The zoo models present in this installation (folders holding a config.json)."""
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").is_file())


def model_dir(name: str) -> Path:
    """The folder of zoo model `name`; KeyError if there is none."""
    path = ZOO_DIR / name
    if not (path / "config.json").is_file():
        raise KeyError(name)
    return path
