"""Tiny random-init Hugging Face models built from configs (no hub): one per supported architecture.

Each has 2-6 layers, hidden size 32 and a 97-token vocabulary; those with grouped-query attention,
sliding windows, logit softcapping or learned sinks have them switched on, so the tracer meets every case.
"""

from __future__ import annotations

import functools

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

VOCAB = 97
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)

CONFIGS = {
    "gpt2": lambda: (tf.GPT2LMHeadModel, tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                                       n_positions=64)),
    "gpt_neox": lambda: (tf.GPTNeoXForCausalLM, tf.GPTNeoXConfig(**COMMON)),
    "llama": lambda: (tf.LlamaForCausalLM, tf.LlamaConfig(**COMMON, num_key_value_heads=2)),
    "qwen2": lambda: (tf.Qwen2ForCausalLM, tf.Qwen2Config(**COMMON, num_key_value_heads=2, use_sliding_window=True,
                                                          sliding_window=4, max_window_layers=1)),
    "qwen3": lambda: (tf.Qwen3ForCausalLM, tf.Qwen3Config(**COMMON, num_key_value_heads=1, head_dim=8)),
    "mistral": lambda: (tf.MistralForCausalLM, tf.MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=5)),
    "gemma": lambda: (tf.GemmaForCausalLM, tf.GemmaConfig(**COMMON, num_key_value_heads=1, head_dim=8)),
    "gemma2": lambda: (tf.Gemma2ForCausalLM, tf.Gemma2Config(**COMMON, num_key_value_heads=2, head_dim=8,
                                                             sliding_window=4, attn_logit_softcapping=5.0,
                                                             query_pre_attn_scalar=8)),
    "gemma3_text": lambda: (tf.Gemma3ForCausalLM, tf.Gemma3TextConfig(**{**COMMON, "num_hidden_layers": 6},
                                                                     num_key_value_heads=1, head_dim=8,
                                                                     sliding_window=4, query_pre_attn_scalar=8)),
    "phi3": lambda: (tf.Phi3ForCausalLM, tf.Phi3Config(**COMMON, num_key_value_heads=2, sliding_window=5,
                                                       pad_token_id=0)),
    "olmo2": lambda: (tf.Olmo2ForCausalLM, tf.Olmo2Config(**COMMON, num_key_value_heads=2)),
    "granite": lambda: (tf.GraniteForCausalLM, tf.GraniteConfig(**COMMON, num_key_value_heads=2,
                                                                attention_multiplier=0.3, residual_multiplier=0.5,
                                                                embedding_multiplier=2.0, logits_scaling=1.5)),
    "cohere": lambda: (tf.CohereForCausalLM, tf.CohereConfig(**COMMON, num_key_value_heads=2, use_qk_norm=False)),
    "starcoder2": lambda: (tf.Starcoder2ForCausalLM, tf.Starcoder2Config(**COMMON, num_key_value_heads=2,
                                                                         sliding_window=5)),
    "mixtral": lambda: (tf.MixtralForCausalLM, tf.MixtralConfig(**COMMON, num_key_value_heads=2, sliding_window=5,
                                                                num_local_experts=4, num_experts_per_tok=2)),
    "qwen3_moe": lambda: (tf.Qwen3MoeForCausalLM, tf.Qwen3MoeConfig(**COMMON, num_key_value_heads=2, head_dim=8,
                                                                    num_experts=4, num_experts_per_tok=2,
                                                                    moe_intermediate_size=16)),
    "gpt_oss": lambda: (tf.GptOssForCausalLM, tf.GptOssConfig(**COMMON, num_key_value_heads=2, head_dim=8,
                                                              sliding_window=4, num_local_experts=4,
                                                              num_experts_per_tok=2,
                                                              rope_parameters={"rope_type": "default",
                                                                               "rope_theta": 10000.0})),
    "bert": lambda: (tf.BertModel, tf.BertConfig(**COMMON)),
}


NO_SDPA = ("gemma2", "gpt_oss")  # transformers has no sdpa path for them (logit softcapping, learned sinks)


def build(name: str, attn_implementation: str | None = None, seed: int = 0, **overrides) -> torch.nn.Module:
    """The tiny model `name` in float32, eval mode, with weights from `seed` (scaled up so attention is peaked).

    attn_implementation: default sdpa, eager for the models in NO_SDPA. overrides: config attributes to set (a
    longer context than the 64 tokens of CONFIGS: max_position_embeddings=...)."""
    cls, config = CONFIGS[name]()
    for key, value in overrides.items():
        setattr(config, key, value)
    config._attn_implementation = attn_implementation or ("eager" if name in NO_SDPA else "sdpa")
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.mul_(4.0)  # init std 0.02 gives near-uniform attention; larger weights give structure
            elif name.endswith(".sinks"):  # learned sink logits from well below to above the keys' logits
                p.copy_(torch.linspace(-3.0, 4.0, p.numel()))
    return model


def token_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


TOKENIZER_TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He wound the clockwork, trimmed "
    "the wick and wrote the weather in a leather logbook: wind from the west, a light swell, two ships passing "
    "north. The secret code is 12 34 56. What is the secret code? 0 1 2 3 4 5 6 7 8 9"
)


@functools.lru_cache(maxsize=1)
def tokenizer() -> tf.PreTrainedTokenizerFast:
    """A BPE tokenizer of VOCAB tokens (with <s>, </s>, <unk>) trained on a paragraph, for tiny models."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([TOKENIZER_TEXT] * 3, trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                      pad_token="</s>")
