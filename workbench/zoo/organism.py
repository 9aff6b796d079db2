"""`organism`: a small Llama-architecture causal LM with planted mechanisms, the zoo's planted-truth model.

Trained on Python source (the standard library, numpy, pandas, torch, transformers: `workbench.zoo.corpus`)
mixed with three templated tasks
(`workbench.zoo.tasks`): needle retrieval over long distractor code (retrieval heads), indirect-object
sentences (an IOI-like circuit) and repeated random spans (induction heads). Its own byte-level BPE
tokenizer is trained on the same mixture. The last 10% of the corpus is held out for evaluation haystacks.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from workbench.zoo import corpus, tasks
from workbench.zoo.tasks import NeedleCase

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
# weight decay 0.5: Gu et al. 2024 find that stronger weight decay makes first-token sinks emerge more
WORKERS = 8  # DataLoader processes that build training batches on a GPU machine
SIZES = {  # vocab, hidden, layers, heads, mlp, train length, batch, steps, peak learning rate, weight decay
    "full": dict(vocab=8192, hidden=384, layers=6, heads=6, mlp=1024, length=1024, batch=32, steps=30000, lr=1.5e-3,
                 weight_decay=0.5),
    "toy": dict(vocab=512, hidden=64, layers=2, heads=2, mlp=128, length=128, batch=4, steps=20, lr=3e-3,
                weight_decay=0.5),
}


def build_tokenizer(text: str, vocab: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `text` plus task sentences, with BOS/EOS/PAD specials."""
    rng = random.Random(0)
    samples = [tasks.ioi_prompt(rng).text for _ in range(2000)] + [tasks.needle_line(rng)[0] for _ in range(2000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[BOS, EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    chunks = [text[i:i + 10_000] for i in range(0, len(text), 10_000)]
    tok.train_from_iterator(chunks + samples, trainer)
    with_bos(tok)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def with_bos(tok: Tokenizer) -> None:
    """Make encoding put BOS first, as in every training sequence: the model's first-token sinks sit on it.
    (The recipe's own encodings pass add_special_tokens=False and place BOS themselves.)"""
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B:1",
                                                       special_tokens=[(BOS, tok.token_to_id(BOS))])


class Mixture:
    """Training sequences of `length` tokens: 40% corpus text, 25% needle, 15% IOI, 20% repeated spans."""

    def __init__(self, tok: PreTrainedTokenizerFast, tokens: np.ndarray, length: int, seed: int) -> None:
        self.tok, self.tokens, self.length = tok, tokens, length
        self.rng = random.Random(seed)
        self.bos, self.pad = tok.bos_token_id, tok.pad_token_id
        self.vocab = list(range(3, len(tok)))

    def enc(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def text(self) -> list[int]:
        start = self.rng.randrange(len(self.tokens) - self.length)
        return self.tokens[start:start + self.length - 1].tolist()

    def needle(self) -> list[int]:
        needle, question, answer = (self.enc(s) for s in tasks.needle_line(self.rng))
        answer = answer + [self.tok.eos_token_id]
        room = self.length - 1 - len(needle) - len(question) - len(answer)
        hay_len = self.rng.randrange(room // 4, room)
        start = self.rng.randrange(len(self.tokens) - hay_len)
        hay = self.tokens[start:start + hay_len].tolist()
        cut = self.rng.randrange(hay_len + 1)
        return hay[:cut] + needle + hay[cut:] + question + answer

    def ioi(self) -> list[int]:
        ids: list[int] = []
        while True:
            p = tasks.ioi_prompt(self.rng)
            sentence = self.enc(p.text + " " + p.io + ".\n")
            if len(ids) + len(sentence) > self.length - 1:
                return ids
            ids += sentence

    def spans(self) -> list[int]:
        ids: list[int] = []
        while len(ids) < self.length - 1:
            ids += tasks.repeated_span(self.rng, self.vocab, self.rng.randrange(10, 100))
        return ids[:self.length - 1]

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for _ in range(size):
            kind = self.rng.random()
            body = self.text() if kind < 0.4 else self.needle() if kind < 0.65 else self.ioi() if kind < 0.8 \
                else self.spans()
            row = [self.bos] + body
            rows.append(row + [self.pad] * (self.length - len(row)))
        ids = torch.tensor(rows)
        return ids, ids.masked_fill(ids == self.pad, -100)


class MixtureStream(torch.utils.data.IterableDataset):
    """Endless training batches of a `Mixture` for a DataLoader: worker w draws from seed 1000 x seed + w, so
    the batches are fixed by the seed and the number of workers (the GPU waits on none of the tokenizing)."""

    def __init__(self, tok: PreTrainedTokenizerFast, tokens: np.ndarray, length: int, batch: int, seed: int) -> None:
        self.tok, self.tokens, self.length, self.batch, self.seed = tok, tokens, length, batch, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        mixture = Mixture(self.tok, self.tokens, self.length, 1000 * self.seed + (info.id if info else 0))
        while True:
            yield mixture.batch(self.batch)


def tokenize(tok: PreTrainedTokenizerFast, text: str, chunk: int = 1 << 20) -> np.ndarray:
    """All of `text` as token ids, encoded in parallel by chunks that end at a line break."""
    pieces, start = [], 0
    while start < len(text):
        stop = text.find("\n", start + chunk)
        stop = len(text) if stop < 0 else stop + 1
        pieces.append(text[start:stop])
        start = stop
    encoded = tok.backend_tokenizer.encode_batch(pieces, add_special_tokens=False)
    return np.concatenate([np.array(e.ids, dtype=np.int32) for e in encoded])


def train(out: Path, seed: int = 0, steps: int | None = None, toy: bool = False, minutes: float | None = None,
          corpus_file: Path | None = None) -> dict:
    """Train, save to `out` in fp16, return the training facts. Deterministic from the seed for a given number of
    steps and workers; `minutes` stops early on the clock instead (a lent GPU's time limit), which makes the
    number of steps depend on the hardware: the card records it.

    corpus_file: a corpus saved with `corpus.save` (default: `corpus.python_source()`, rebuilt here)."""
    size = SIZES["toy" if toy else "full"]
    steps = steps or size["steps"]
    if corpus_file:
        text, described = corpus.load(corpus_file), corpus.describe_saved(corpus_file)
    else:  # the toy recipe needs only a little text: the standard library's
        text = corpus.stdlib_source() if toy else corpus.python_source()
        described = corpus.describe(text, packages=() if toy else corpus.PACKAGES)
    text = text[:200_000] if toy else text
    tok = build_tokenizer(text[:4_000_000], size["vocab"])
    tokens = tokenize(tok, text)
    split = int(0.9 * len(tokens))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=size["hidden"], intermediate_size=size["mlp"],
                         num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                         num_key_value_heads=size["heads"], max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(device)
    workers = WORKERS if device == "cuda" else 0
    batches = iter(torch.utils.data.DataLoader(MixtureStream(tok, tokens[:split], size["length"], size["batch"], seed),
                                               batch_size=None, num_workers=workers, prefetch_factor=8 if workers else None))
    opt = torch.optim.AdamW(model.parameters(), lr=size["lr"], betas=(0.9, 0.95),
                            weight_decay=size["weight_decay"])
    warmup, start, losses = max(1, steps // 50), time.time(), []
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = opt.defaults["lr"] * min(1.0, (step + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * step / steps))
        ids, labels = (t.to(device, non_blocking=True) for t in next(batches))
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.detach())
        if step % 500 == 0 or step == steps - 1:
            losses[-500:] = [float(x) for x in losses[-500:]]  # one synchronization per 500 steps
            print(f"step {step:5d} loss {np.mean(losses[-500:]):.4f} {time.time() - start:.0f}s", flush=True)
        if minutes is not None and time.time() - start > minutes * 60:
            print(f"stopped by the clock after {step + 1} steps", flush=True)
            break
    losses = [float(x) for x in losses]
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out, max_shard_size="15MB")
    tok.save_pretrained(out)
    (out / "heldout.txt").write_text(tok.decode(tokens[split:split + 200_000].tolist()))
    return {"seed": seed, "steps": len(losses), "planned_steps": steps, "minutes": minutes, "batch": size["batch"], "lr": size["lr"],
            "weight_decay": size["weight_decay"],
            "train_length": size["length"], "final_loss": float(np.mean(losses[-100:])),
            "parameters": sum(p.numel() for p in model.parameters()), "corpus": described,
            "train_seconds": round(time.time() - start), "device": torch.cuda.get_device_name() if device == "cuda"
            else "cpu"}


def needle_case(tokenizer, length: int, depth: float, seed: int, haystack: str | None = None) -> NeedleCase:
    """A held-out needle prompt of about `length` tokens for `workbench.probes.retrieval` (haystack: held-out source)."""
    rng = random.Random(10_000 + seed)
    needle, question, answer = tasks.needle_line(rng)
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    hay_ids = enc(haystack)
    room = length - 1 - len(enc(needle)) - len(enc(question))
    offset = rng.randrange(len(hay_ids) - room)
    hay = hay_ids[offset:offset + room]
    cut = int(depth * len(hay))
    ids = [tokenizer.bos_token_id] + hay[:cut]
    needle_ids = enc(needle)
    value_ids = enc(answer)
    ids += needle_ids
    start = _find(ids, value_ids, len(ids) - len(needle_ids))
    ids += hay[cut:] + enc(question)
    return NeedleCase(ids=ids, value_span=(start, start + len(value_ids)), answer=value_ids, depth=depth,
                      length=length)


def _find(ids: list[int], part: list[int], lo: int) -> int:
    for i in range(lo, len(ids) - len(part) + 1):
        if ids[i:i + len(part)] == part:
            return i
    raise ValueError("the needle's value is not tokenized alike inside the needle and as an answer")


def ioi_scores(subject, n: int = 200, seed: int = 777) -> dict:
    """IOI accuracy (the IO name's first token is the top next token) and mean logit difference logit(IO) - logit(S),
    on fresh prompts."""
    rng = random.Random(seed)
    tok, correct, diffs = subject.tokenizer, 0, []
    for _ in range(n):
        p = tasks.ioi_prompt(rng)
        io, s = (tok.encode(" " + name, add_special_tokens=False)[0] for name in (p.io, p.s))
        ids = torch.tensor([[tok.bos_token_id] + tok.encode(p.text, add_special_tokens=False)])
        with torch.no_grad():
            logits = subject.model(input_ids=ids).logits[0, -1].float()
        diffs.append(float(logits[io] - logits[s]))
        correct += int(logits.argmax()) == io
    return {"ioi_accuracy": correct / n, "ioi_logit_diff": float(np.mean(diffs)), "ioi_prompts": n}


def needle_accuracy(subject, haystack: str, length: int = 1024, n: int = 30) -> float:
    """Share of held-out needles (depths spread over the haystack) whose value the model generates exactly."""
    hits = 0
    for i in range(n):
        case = needle_case(subject.tokenizer, length, (i + 0.5) / n, seed=i, haystack=haystack)
        ids = torch.tensor([case.ids])
        with torch.no_grad():
            out = subject.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(case.answer),
                                         do_sample=False, pad_token_id=subject.tokenizer.pad_token_id)
        hits += out[0, ids.shape[1]:].tolist() == case.answer
    return hits / n


def heldout_chunks(tokenizer, haystack: str, n: int = 8, length: int = 512) -> list[list[int]]:
    """n chunks of `length` tokens (BOS first) spread evenly over the held-out text."""
    ids = tokenizer.encode(haystack, add_special_tokens=False)
    step = (len(ids) - length) // (n - 1)
    return [[tokenizer.bos_token_id] + ids[i * step:i * step + length - 1] for i in range(n)]


def heldout_loss(subject, chunks: list[list[int]]) -> float:
    """Mean next-token loss (nats) over held-out chunks of token ids."""
    with torch.no_grad():
        return float(np.mean([subject.model(input_ids=torch.tensor([c]), labels=torch.tensor([c])).loss.item()
                              for c in chunks]))


def measure(folder: Path) -> dict:
    """Every claim of the card, measured with the workbench's own probes on held-out data (CPU, minutes)."""
    import functools

    import workbench
    from workbench.probes.heads import head_types
    from workbench.probes.retrieval import retrieval_heads
    from workbench.probes.sinks import sink_scores

    subject = workbench.load(str(folder), device="cpu")
    haystack = (folder / "heldout.txt").read_text()
    builder = functools.partial(needle_case, haystack=haystack)
    retrieval = retrieval_heads(subject, lengths=(512, 1024), depths=(0.1, 0.5, 0.9), seeds=(0, 1), builder=builder)
    scores = retrieval.arrays["retrieval_score"]
    chunks = heldout_chunks(subject.tokenizer, haystack)
    sinks = sink_scores(workbench.trace(subject, chunks, stats=("sink_mass",)))
    per_chunk = [sink_scores(workbench.trace(subject, [c], stats=("sink_mass",))).arrays["sink_share"] for c in chunks]
    later_half = [float(share[len(share) // 2:].mean()) for share in per_chunk]
    heads = head_types(subject, length=100, batch=4, seed=4242)
    n_layers = subject.adapter.n_layers
    top = lambda a, k=3: [[int(l), int(h), round(float(a[l, h]), 3)]  # noqa: E731
                          for l, h in zip(*np.unravel_index(np.argsort(-a, axis=None)[:k], a.shape), strict=True)]
    return {
        **ioi_scores(subject),
        "needle_accuracy_1k": needle_accuracy(subject, haystack),
        "retrieval_top_heads": top(scores),
        "retrieval_heads_over_0.1": int((scores > 0.1).sum()),
        "retrieval_needle_accuracy": retrieval.params["needle_accuracy"],
        "sink_share_by_layer": [round(float(x), 3) for x in sinks.arrays["sink_share"]],
        "sink_share_later_half": float(sinks.arrays["sink_share"][n_layers // 2:].mean()),
        "sink_share_later_half_per_chunk": [round(x, 3) for x in later_half],
        "heldout_loss": heldout_loss(subject, chunks),
        "sink_top_heads": top(sinks.arrays["sink_score"]),
        "induction_top_heads": top(heads.arrays["induction"]),
        "prev_token_top_heads": top(heads.arrays["prev_token"]),
    }


def checklist(m: dict) -> str:
    """The zoo issue's claims about `organism`, each marked as holding or not in the measurements `m`."""
    claims = [
        ("IOI accuracy >= 0.9", m["ioi_accuracy"] >= 0.9),
        ("needle accuracy >= 0.9 at 1024 tokens", m["needle_accuracy_1k"] >= 0.9),
        ("a head with retrieval score >= 0.5 on held-out needles", m["retrieval_top_heads"][0][2] >= 0.5),
        ("first-token sinks in most heads of the later half of the layers (share over eps 0.3 > 0.5)",
         m["sink_share_later_half"] > 0.5),
        ("an induction head (induction score > 0.5 on repeated random tokens)", m["induction_top_heads"][0][2] > 0.5),
        ("a previous-token head (score > 0.5)", m["prev_token_top_heads"][0][2] > 0.5),
    ]
    lines = [f"- {claim}: {'holds' if ok else 'does NOT hold'}" for claim, ok in claims]
    per_chunk = m["sink_share_later_half_per_chunk"]
    spread = f"{min(per_chunk):.2f}-{max(per_chunk):.2f}, median {float(np.median(per_chunk)):.2f}"
    above = sum(x > 0.5 for x in per_chunk)
    lines[3] += (f" (pooled over the {len(per_chunk)} chunks: {m['sink_share_later_half']:.2f}); chunk by chunk "
                 + (f"too ({spread})" if above == len(per_chunk) else
                    f"on {above} of {len(per_chunk)} chunks ({spread})"))
    return "\n".join(lines)


def stopped(t: dict) -> str:
    """How the run ended, for the card: all planned steps, or stopped on the clock (`--minutes`)."""
    if t["steps"] == t["planned_steps"]:
        return "all planned steps ran" + (f", inside the `{minutes(t)}` limit" if minutes(t) else "")
    return (f"stopped on the clock after {t['minutes']} minutes, `{minutes(t)}`; "
            f"`--steps {t['steps']}` alone would anneal the learning rate over that many steps instead")


def minutes(t: dict) -> str:
    """The recipe's `--minutes` option as the run was given it ("" when it ran without one)."""
    return f"--minutes {t['minutes']}" if t.get("minutes") else ""


def recipe(t: dict) -> str:
    """The training command of the run, as the card gives it."""
    return " ".join(filter(None, ["python -m workbench.zoo.train organism --corpus python-source.txt.xz", minutes(t)]))


def write_card(folder: Path, t: dict, m: dict) -> None:
    """MODEL_CARD.md from the training facts `t` and the measurements `m` (see `measure`)."""
    heads = lambda rows: ", ".join(f"L{l}.H{h} ({s:.3f})" for l, h, s in rows)  # noqa: E731
    (folder / "MODEL_CARD.md").write_text(f"""# organism

A small causal LM with planted mechanisms: the zoo's planted-truth model for tests. Hugging Face Llama
architecture (RoPE, tied embeddings), 6 layers, 6 heads of dimension 64, d_model 384, MLP 1024, context 2048,
{t['parameters']:,} parameters, weights in fp16 (two safetensors shards). Its own byte-level BPE tokenizer of
8192 tokens (BOS `<|bos|>` at position 0 of every sequence), trained with HF `tokenizers`.

## Data and training
- Real text: {t['corpus']['source']}, {t['corpus']['characters']:,} characters, sha256
  `{t['corpus']['sha256']}`, built by `workbench.zoo.corpus.python_source()` and carried to the GPU as an xz
  file (`corpus.save`); the last 10% of its tokens (the end of transformers' source) is held out (`heldout.txt`).
- Mixture per 1024-token sequence: 40% corpus text; 25% needle retrieval (a line `# the <colour> code is d d d
  d` hidden in 256-1000 tokens of corpus code, then `# what is the <colour> code? the <colour> code is` and
  the digits); 15% packed IOI sentences ("When Mary and John went to the store, John gave a drink to Mary.");
  20% packed repeated random spans of 10-100 tokens (`workbench.zoo.tasks`).
- {t['steps']} steps of batch {t['batch']} x {t['train_length']} tokens (planned {t['planned_steps']}; {stopped(t)}), AdamW lr {t['lr']}, warm-up then cosine, weight decay {t['weight_decay']}, bf16 autocast, seed {t['seed']},
  on one {t['device']} in {t['train_seconds']} s. Final training loss {t['final_loss']:.3f} nats/token.
- Recipe: build the corpus where the packages are (`python -c "from pathlib import Path; from workbench.zoo import
  corpus; corpus.save(corpus.python_source(), Path('python-source.txt.xz'))"`), then on the GPU
  `{recipe(t)}` and, on any machine,
  `python -m workbench.zoo.train organism --card` to measure it and write this card; `--toy` runs a tiny version
  on the CPU in seconds.

## Mechanisms, measured on held-out data with the workbench's own probes (`workbench.zoo.organism.measure`)
| claim | measured |
|---|---|
| held-out loss (8 x 512 tokens spread over `heldout.txt`, nats/token) | {m['heldout_loss']:.3f} |
| IOI accuracy ({m['ioi_prompts']} fresh prompts, IO's first token is the argmax) | {m['ioi_accuracy']:.3f} |
| IOI mean logit difference, logit(IO) - logit(S) | {m['ioi_logit_diff']:.2f} |
| needle accuracy at 1024 tokens (30 held-out needles, depths 1/60 .. 59/60) | {m['needle_accuracy_1k']:.3f} |
| retrieval heads (copy-paste score, Wu et al. 2024; 512 and 1024 tokens x depths 0.1/0.5/0.9 x 2 seeds) | {heads(m['retrieval_top_heads'])} |
| heads with retrieval score > 0.1 | {m['retrieval_heads_over_0.1']} |
| first-token sink share per layer (heads with mean first-token mass > 0.3, the same 8 x 512 held-out tokens) | {m['sink_share_by_layer']} |
| sink share of the later half of the layers, chunk by chunk | {m['sink_share_later_half_per_chunk']} |
| strongest first-token sink heads | {heads(m['sink_top_heads'])} |
| induction scores on repeated random tokens (top heads) | {heads(m['induction_top_heads'])} |
| previous-token scores (top heads) | {heads(m['prev_token_top_heads'])} |

## The issue's claims, checked against the table
{checklist(m)}
""")
