"""Templated tasks that plant known mechanisms in the zoo models, and their held-out evaluation prompts.

- Repeated random spans (induction heads, Olsson et al. 2022): a random span, then the same span again;
  from its second token on, the repeat is predictable only by looking back at what followed last time.
- Indirect-object sentences (an IOI-like circuit, Wang et al. 2022): "When Mary and John went to the store,
  John gave a drink to" -> " Mary"; the answer is the name that appears once.
- Needle retrieval (retrieval heads, Wu et al. 2024): a key/value line hidden in distractor text, asked for
  at the end; the model must copy the value from the needle.
Generators are deterministic given their `random.Random`; evaluation seeds are disjoint from training seeds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ("Mary John Alice Bob Carol David Emma Frank Grace Henry Irene Jack Laura Mike Nora Oscar Paula Quinn "
         "Rachel Steve Tina Victor Wendy Xavier Yvonne Zach Anna Ben Clara Dan Eva Fred Gina Hugo Ivy Jake Kate "
         "Leo Mia Ned Olga Pete Rosa Sam Tom Uma Vera Will").split()
PLACES = ["store", "park", "library", "station", "market", "beach", "office", "garden", "museum", "harbour"]
OBJECTS = ["a drink", "a book", "a key", "an apple", "a letter", "a ticket", "a map", "a coin", "a flower", "a pen"]
TEMPLATES = [
    "When {a} and {b} went to the {place}, {s} gave {obj} to",
    "After {a} and {b} arrived at the {place}, {s} handed {obj} to",
    "While {a} and {b} were at the {place}, {s} passed {obj} to",
    "Then {a} and {b} walked to the {place}, and {s} offered {obj} to",
]
KEYS = ("amber cobalt crimson violet silver golden ivory scarlet olive indigo teal coral maroon azure "
        "copper bronze jade ruby onyx pearl").split()


@dataclass(frozen=True)
class IOIPrompt:
    """An indirect-object prompt: the text before the answer, the right name (IO) and the wrong one (S)."""

    text: str
    io: str
    s: str
    template: int  # index into TEMPLATES

    @property
    def corrupted(self) -> str:
        """The same sentence with the subject's second mention replaced by a third name (answer unknown)."""
        other = next(n for n in NAMES if n not in (self.io, self.s))
        head, _, tail = self.text.rpartition(f" {self.s} ")
        return f"{head} {other} {tail}"


def ioi_prompt(rng: random.Random) -> IOIPrompt:
    """A random IOI sentence without its last word; the answer is ' ' + io."""
    io, s = rng.sample(NAMES, 2)
    a, b = (io, s) if rng.random() < 0.5 else (s, io)
    template = rng.choice(TEMPLATES)
    text = template.format(a=a, b=b, s=s, place=rng.choice(PLACES), obj=rng.choice(OBJECTS))
    return IOIPrompt(text=text, io=io, s=s, template=TEMPLATES.index(template))


def needle_line(rng: random.Random) -> tuple[str, str, str]:
    """(needle sentence, question, answer): a colour key and a four-digit value, asked for at the end."""
    key = rng.choice(KEYS)
    value = " ".join(str(rng.randrange(10)) for _ in range(4))
    return f"\n# the {key} code is {value}\n", f"\n# what is the {key} code? the {key} code is", " " + value


def repeated_span(rng: random.Random, vocab: list[int], length: int) -> list[int]:
    """A random span of `length` token ids from `vocab`, followed by the same span."""
    span = [rng.choice(vocab) for _ in range(length)]
    return span + span


@dataclass(frozen=True)
class NeedleCase:
    """One prompt: token ids, the [start, stop) span of the needle's value inside them, the answer ids."""

    ids: list[int]
    value_span: tuple[int, int]
    answer: list[int]
    depth: float
    length: int
