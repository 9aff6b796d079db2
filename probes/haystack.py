"""Needle-in-a-haystack prompts built offline, with the model's own tokenizer.

The haystack is English prose from the docstrings of the running Python's standard library (read with
`ast`, nothing is imported), so every machine can build it without a network; it differs slightly between
Python versions. The needle is a sentence holding a random number; the prompt ends with the question, and
the answer is the number's tokens. Token spans are exact because the prompt is assembled from separately
tokenized pieces.
"""

from __future__ import annotations

import ast
import functools
import random
import sysconfig
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.zoo.tasks import NeedleCase


@functools.lru_cache(maxsize=1)
def stdlib_prose(max_chars: int = 400_000) -> str:
    """Module docstrings (over 200 characters) of the standard library in file-name order, as paragraphs."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if doc and len(doc) > 200:
            paragraph = " ".join(doc.split())
            parts.append(paragraph)
            total += len(paragraph)
            if total > max_chars:
                break
    if not parts:
        raise WorkbenchError(f"no standard-library docstrings found under {root} to build a haystack from")
    return "\n\n".join(parts)


def needle_case(tokenizer, length: int, depth: float, seed: int) -> NeedleCase:
    """A prompt of about `length` tokens with the needle at relative `depth` (0 = start, 1 = end of the haystack)."""
    if not 0.0 <= depth <= 1.0:
        raise WorkbenchError(f"needle depth {depth} is outside [0, 1]")
    rng = random.Random(seed)
    value = " ".join(str(rng.randrange(10, 100)) for _ in range(3))
    encode = functools.partial(tokenizer.encode, add_special_tokens=False)
    before, after = encode(" The secret code is"), encode(". Remember it.")
    value_ids = encode(" " + value)
    question = encode("\n\nWhat is the secret code? The secret code is")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    budget = length - len(bos) - len(before) - len(value_ids) - len(after) - len(question)
    if budget < 16:
        raise WorkbenchError(f"haystack length {length} is too short for the needle and the question")
    prose = stdlib_prose()
    offset = rng.randrange(len(prose) // 2)
    hay = encode(prose[offset:offset + 8 * budget])[:budget]
    if len(hay) < budget:
        raise WorkbenchError(f"the offline haystack text is too short for {length} tokens")
    cut = int(round(depth * budget))
    ids = bos + hay[:cut] + before
    start = len(ids)
    ids += value_ids + after + hay[cut:] + question
    return NeedleCase(ids=ids, value_span=(start, start + len(value_ids)), answer=value_ids, depth=depth, length=length)
