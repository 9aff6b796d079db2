"""Test-wide settings: never touch the hub; the store in pytest's temp dirs, the model cache apart from the user's."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton reads this once, when first imported (possibly by another package during collection): the kernels
# run in Triton's CPU interpreter unless WORKBENCH_GPU_TESTS asks for the GPU.
os.environ.setdefault("TRITON_INTERPRET", "0" if os.environ.get("WORKBENCH_GPU_TESTS") else "1")

# Run from the checkout, its folder kernels/ would hide Hugging Face's `kernels` from transformers: importing
# workbench first hands that name to the installed package (workbench.checkout).
import workbench  # noqa: E402,F401,I001
from platformdirs import user_cache_dir  # noqa: E402

# Named models convert once into a cache of the test suite's own (kept between runs), apart from the user's.
os.environ.setdefault("WORKBENCH_CACHE", os.path.join(user_cache_dir("attention-workbench"), "tests"))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_STORE", str(tmp_path / "store.duckdb"))


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A tiny Llama with a tiny BPE tokenizer (97 tokens), saved as a Hugging Face folder."""
    from tiny_models import build, tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    build("llama").save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path
