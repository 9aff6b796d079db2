"""A context-parallel trace on 2 and 4 gloo ranks equals the one-process trace: every statistic, the logits and
the hidden states, with grouped-query attention, left and right padding, sliding windows (Gemma-3's mix of local
and global layers, Qwen2's windowed layers), a sequence that does not split evenly, in-kernel edits (the VAR
redistribution among them) applied across the shards, and GPT-OSS's learned sinks; the block statistics over
sequences of several blocks."""

import pytest
import torch
from gloo_ranks import spawn
from tiny_models import build, token_ids, tokenizer

import workbench
from workbench import context_parallel
from workbench.errors import WorkbenchError
from workbench.kernels import BLOCK_STATS, KEY_STATS, QUERY_STATS, HeadEdits

TEXTS = ["The keeper wrote the weather in a logbook.", "The secret code is 12 34 56. What is the secret code?"]
PARALLEL_STATS = QUERY_STATS + KEY_STATS  # the inputs of these cases are shorter than one block


def _left_padding_tokenizer():
    tok = tokenizer()
    tok.padding_side = "left"
    return tok


def _edits(n_heads: int) -> dict[int, HeadEdits]:
    return {1: HeadEdits(temperature=torch.linspace(0.7, 1.4, n_heads),
                         key_bias=torch.full((n_heads, 1), 1.5), bias_keys=torch.tensor([2]),
                         redistribute=torch.full((n_heads,), 0.6), source_keys=torch.tensor([0]),
                         target_keys=torch.tensor([3, 5]), gate=torch.linspace(0.5, 1.5, n_heads))}


CASES = {  # name -> (model, inputs, edits, logits kept)
    "llama-gqa-left-padding": ("llama", TEXTS, False, "last"),
    "gemma3-sliding-right-padding": ("gemma3_text", [token_ids(1, 21, seed=1)[0].tolist(),
                                                     token_ids(1, 14, seed=2)[0].tolist()], False, "last"),
    "qwen2-sliding-edits": ("qwen2", token_ids(2, 19, seed=3), True, "all"),
    "gpt2-uneven": ("gpt2", token_ids(1, 23, seed=4), False, "all"),
    "gpt_oss-learned-sinks": ("gpt_oss", token_ids(2, 18, seed=5), False, "last"),
}


def _trace(case: str, edited: bool = True) -> workbench.Trace:
    """The case traced in this process, context-parallel when a process group is up."""
    name, inputs, with_edits, logits = CASES[case]
    subject = workbench.load(build(name), tokenizer=_left_padding_tokenizer(), device="cpu")
    edits = _edits(subject.adapter.n_heads) if with_edits and edited else {}
    with workbench.capture(subject, stats=(), edits=edits):
        return workbench.trace(subject, inputs, stats=PARALLEL_STATS, logits=logits, hidden_states=True,
                               context_parallel=torch.distributed.is_initialized())


FOUR_RANKS = ("llama-gqa-left-padding", "gemma3-sliding-right-padding")  # 4 ranks: the cases with padding


def _traces(cases=tuple(CASES)) -> dict[str, workbench.Trace]:
    return {case: _trace(case) for case in cases}


def _cli(folder: str) -> None:
    from typer.testing import CliRunner

    from workbench.cli import app

    result = CliRunner().invoke(app, ["trace", "-m", "induction-2l", "--context-parallel", "--text", TEXTS[1],
                                      "--out", f"{folder}/trace", "--store", f"{folder}/runs.duckdb"])
    assert result.exit_code == 0, result.output


def _ranks(folder: str | None) -> dict[str, workbench.Trace]:
    """What each rank does: trace the cases, then (given a folder) run `workbench trace --context-parallel`."""
    traces = _traces(tuple(CASES) if folder is not None else FOUR_RANKS)
    if folder is not None:
        _cli(folder)
    return traces


@pytest.mark.parametrize("world", [2, 4])
def test_context_parallel_trace_equals_one_process(world, tmp_path):
    """On 2 ranks every case and `workbench trace --context-parallel` (one Trace folder, one store run; spawning
    ranks is the slow part of these tests, so the command runs in the same ranks); on 4, the padded cases."""
    cli = str(tmp_path) if world == 2 else None
    ranks = spawn(_ranks, world, tmp_path / "ranks", cli)
    want = _traces(tuple(CASES) if cli else FOUR_RANKS)
    for got in ranks:  # every rank holds the whole trace
        for case, one in want.items():
            many = got[case]
            assert many.options["context_parallel_ranks"] == world
            assert many.stats.keys() == one.stats.keys()
            torch.testing.assert_close(many.stats["argmax_key"], one.stats["argmax_key"], rtol=0, atol=0)
            # float32 sums over at most 64 keys, regrouped by the shards: a few ulps of 1
            for name in set(PARALLEL_STATS) - {"argmax_key"}:
                torch.testing.assert_close(many.stats[name], one.stats[name], atol=2e-6, rtol=2e-5, equal_nan=True,
                                           msg=lambda m, c=case, n=name: f"{c} {n}: {m}")
            torch.testing.assert_close(many.logits, one.logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(many.hidden_states, one.hidden_states, atol=1e-5, rtol=1e-5)
            assert many.tokens == one.tokens
    if cli:
        _check_cli(tmp_path)


def _check_cli(tmp_path) -> None:
    with workbench.Store(tmp_path / "runs.duckdb") as db:
        assert db.runs().kind.tolist() == ["trace"]
    want = workbench.trace(workbench.load("induction-2l", device="cpu"), TEXTS[1])
    got = workbench.Trace.load(tmp_path / "trace")
    for name in want.stats:
        torch.testing.assert_close(got.stats[name], want.stats[name], atol=2e-6, rtol=2e-5, equal_nan=True)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-5)


def test_the_edited_case_is_edited():
    case = "qwen2-sliding-edits"
    assert not torch.allclose(_trace(case).stats["entropy"], _trace(case, edited=False).stats["entropy"])


def test_the_zigzag_split_balances_causal_work():
    world, chunk = 4, 3
    owned = [torch.cat([torch.arange(c * chunk, (c + 1) * chunk) for c in context_parallel.zigzag(world, r)])
             for r in range(world)]
    assert sorted(torch.cat(owned).tolist()) == list(range(2 * world * chunk))  # every position once
    work = [int((pos + 1).sum()) for pos in owned]  # causal keys seen by each rank's queries
    assert len(set(work)) == 1


def test_context_parallel_needs_a_process_group():
    subject = workbench.load(build("llama"), device="cpu")
    with pytest.raises(workbench.WorkbenchError, match="torchrun"):
        workbench.trace(subject, token_ids(1, 8), context_parallel=True)


def test_bidirectional_attention_is_refused():
    q = torch.zeros(1, 2, 4, 8)
    with pytest.raises(workbench.WorkbenchError, match="bidirectional"):
        context_parallel.attention(q, q, q, None, causal=False, stats=())



BLOCK = 64  # the smallest block: inputs of a few blocks stay small
BLOCK_CASES = {  # name -> (model, inputs): right padding, and left padding of one whole block
    "gpt2-right-padding": ("gpt2", [token_ids(1, 150, seed=6)[0].tolist(), token_ids(1, 97, seed=7)[0].tolist()]),
    "gemma3-sliding": ("gemma3_text", token_ids(1, 200, seed=8)),
    "llama-left-padding-of-a-block": ("llama", ["the code " * 75, "the code " * (75 - BLOCK // 2)]),
}


def _block_trace(case: str) -> workbench.Trace:
    name, inputs = BLOCK_CASES[case]
    subject = workbench.load(build(name, max_position_embeddings=320), tokenizer=_left_padding_tokenizer(),
                             device="cpu")
    return workbench.trace(subject, inputs, stats=PARALLEL_STATS + BLOCK_STATS, block_size=BLOCK,
                           context_parallel=torch.distributed.is_initialized())


def _block_ranks() -> tuple[dict[str, workbench.Trace], str]:
    """Each rank: the block cases, and the error for left padding that is not whole blocks."""
    subject = workbench.load(build("llama", max_position_embeddings=320), tokenizer=_left_padding_tokenizer(),
                             device="cpu")
    try:
        workbench.trace(subject, ["the code " * 75, "the code " * 50], stats=BLOCK_STATS, block_size=BLOCK,
                        context_parallel=True)
        refused = ""
    except WorkbenchError as err:
        refused = str(err)
    return {case: _block_trace(case) for case in BLOCK_CASES}, refused


def test_context_parallel_block_statistics_equal_one_process(tmp_path):
    """block_mass / block_max of sequences of 2-4 blocks whose chunks lie on two ranks equal one process's; left
    padding that does not fill whole blocks is refused before any work, naming where the tokens start."""
    ranks = spawn(_block_ranks, 2, tmp_path / "ranks")
    want = {case: _block_trace(case) for case in BLOCK_CASES}
    assert want["llama-left-padding-of-a-block"].attention_mask[1, :BLOCK].sum() == 0  # one whole block of padding
    for got, refused in ranks:
        assert "first real token on a block edge" in refused and "[50]" in refused
        for case, one in want.items():
            many = got[case]
            assert one.stats["block_mass"].shape[-2:] == (-(-one.token_ids.shape[1] // BLOCK),) * 2
            torch.testing.assert_close(many.stats["argmax_key"], one.stats["argmax_key"], rtol=0, atol=0)
            # float32 sums of up to 64 x 64 weights, regrouped by the shards
            for name in set(PARALLEL_STATS + BLOCK_STATS) - {"argmax_key"}:
                torch.testing.assert_close(many.stats[name], one.stats[name], atol=1e-5, rtol=2e-5, equal_nan=True,
                                           msg=lambda m, c=case, n=name: f"{c} {n}: {m}")
