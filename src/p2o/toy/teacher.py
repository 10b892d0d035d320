"""The toy world's *scripted* teacher: a stand-in reflection model, not a language model.

No real LLM can run on the machines p2o is tested on, so the Teacher-Ref role is played in the toy
world by this script. It reads the prompt GEPA sends a reflection model (the current instruction
and the reflective examples: inputs, generated outputs, feedback with the gold answer), works out
which of the world's rules explains the gold answers, as a real teacher would, and answers with a
new instruction inside ``` fences, written in the toy world's language.

It knows the world's *language* (every rule and its paraphrases), never the seed's assignment of
rules to operators: everything it says comes from the examples it is shown. With probability
`noise` it answers with a wrong rule or a vague instruction instead, so that GEPA's evaluation and
selection of candidates matter.

Select it wherever a reflection model is chosen as `toy-teacher` (`make_toy_teacher(**options)`).
"""

from __future__ import annotations

import itertools
import random
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from p2o.toy import world as W

NAME = "toy-teacher"

_EXAMPLE_RE = re.compile(r"^\s*#+\s*Example\s*\d+\b.*$", re.MULTILINE)
_GOLD_RE = re.compile(
    r"(?:correct|gold|expected|reference)\s+answer\s*(?:is|was|:)?\s*:?\s*(\d(?:[ \t]*\d)*)", re.I
)
_CORRECT_RE = re.compile(r"final answer\s*:?\s*(\d(?:[ \t]*\d)*)\s*is correct", re.I)
_FENCE_RE = re.compile(r"```[^\n]*\n(.*?)```", re.S)


@dataclass
class Example:
    """One reflective example as the teacher read it."""

    a: str
    op: str
    b: str
    gold: str
    failed: bool


@dataclass
class Proposal:
    """What the teacher answered and why (kept in `ToyTeacher.history`)."""

    text: str
    instruction: str
    kind: str  # "inferred", "wrong" (noise), "vague" (noise or nothing to infer from)
    rule: str | None
    inferred_rule: str | None
    examples: list[Example] = field(default_factory=list)


def _digits(s: str) -> str:
    return re.sub(r"\s", "", s)


def _gold(block: str) -> tuple[str, bool] | None:
    """(gold answer, failed?) from one example's feedback, or None."""
    m = _GOLD_RE.search(block)
    if m:
        return _digits(m.group(1)), True
    m = _CORRECT_RE.search(block)
    if m:
        return _digits(m.group(1)), False
    return None


def parse_examples(prompt: str) -> list[Example]:
    """The reflective examples in a reflection prompt.

    GEPA renders them as markdown blocks headed `# Example N`; each block holds a problem `a OP b`
    and feedback naming the gold answer. Without such headers, problems and gold answers are paired
    in the order they appear.
    """
    heads = list(_EXAMPLE_RE.finditer(prompt))
    out: list[Example] = []
    if heads:
        bounds = [h.start() for h in heads] + [len(prompt)]
        for start, end in itertools.pairwise(bounds):
            block = prompt[start:end]
            problems = W.find_problems(block)
            gold = _gold(block)
            if problems and gold is not None:
                a, op, b = problems[0]
                out.append(Example(a, op, b, gold[0], gold[1]))
        return out
    problems = W.find_problems(prompt)
    found = [(m.start(), _digits(m.group(1)), True) for m in _GOLD_RE.finditer(prompt)]
    found += [(m.start(), _digits(m.group(1)), False) for m in _CORRECT_RE.finditer(prompt)]
    golds = [(gold, failed) for _, gold, failed in sorted(found)]
    for (a, op, b), (gold, failed) in zip(problems, golds, strict=False):
        out.append(Example(a, op, b, gold, failed))
    return out


def current_instruction(prompt: str) -> str | None:
    """The instruction GEPA shows as the one to improve (the first fenced block), if any."""
    m = _FENCE_RE.search(prompt)
    return m.group(1).strip() if m else None


def explains(rule: str, ex: Example) -> bool:
    if len(ex.a) != len(ex.b) or len(ex.gold) != len(ex.a):
        return False
    return W.apply_rule(rule, ex.a, ex.b) == ex.gold


def infer_rule(examples: list[Example]) -> str | None:
    """The rule that explains the most failed examples (then the most examples); None if none fits.

    A real teacher fixes what went wrong first: examples the assistant already got right count
    only to break ties. Rules are tried in the world's order, so ties are broken deterministically.
    """
    best, best_key = None, (0, 0)
    for rule in W.RULES:
        failed = sum(explains(rule, e) for e in examples if e.failed)
        total = sum(explains(rule, e) for e in examples)
        key = (failed, total)
        if key > best_key:
            best, best_key = rule, key
    return best


class ToyTeacher:
    """A scripted reflection model for the toy world: `teacher(prompt) -> str`.

    `noise`: probability of answering with a wrong rule (half of those times) or a vague instruction
    (the other half) instead of the rule the examples show. `seed` makes its choices reproducible.
    Every answer is recorded in `history`.
    """

    scripted = True

    def __init__(self, noise: float = 0.2, seed: int = 0, preface_p: float = 0.25, closing_p: float = 0.25):
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"toy-teacher noise must be in [0, 1] (got {noise})")
        self.noise = noise
        self.seed = seed
        self.preface_p = preface_p
        self.closing_p = closing_p
        self.history: list[Proposal] = []
        self._rng = random.Random(f"p2o-toy-teacher-{seed}")
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ToyTeacher(noise={self.noise}, seed={self.seed})  # scripted, not a language model"

    def __call__(self, prompt: str | list[dict[str, Any]]) -> str:
        return self.propose(prompt).text

    def propose(self, prompt: str | list[dict[str, Any]]) -> Proposal:
        text = _prompt_text(prompt)
        examples = parse_examples(text)
        inferred = infer_rule(examples)
        current = current_instruction(text)
        with self._lock:
            rng = self._rng
            kind, rule = "inferred", inferred
            if inferred is None:
                kind = "vague"
            elif rng.random() < self.noise:
                if rng.random() < 0.5:
                    kind, rule = "wrong", rng.choice([r for r in W.RULES if r != inferred])
                else:
                    kind, rule = "vague", None
            instruction = self._write(rule, rng, avoid=current)
        if kind == "inferred":
            why = (
                f"Reading the {len(examples)} examples, the gold answers follow one rule: each answer "
                f"digit is {W.RULES[inferred].summary} of the two digits in the same place."  # type: ignore[index]
            )
        elif kind == "wrong":
            why = f"The answers seem to take {W.RULES[rule].summary} of the digits in each place."  # type: ignore[index]
        else:
            why = "I could not pin down the rule from these examples."
        out = f"{why}\n\n```\n{instruction}\n```"
        proposal = Proposal(out, instruction, kind, rule, inferred, examples)
        with self._lock:
            self.history.append(proposal)
        return proposal

    def _write(self, rule: str | None, rng: random.Random, avoid: str | None) -> str:
        for _ in range(10):  # rephrase rather than repeat the current instruction
            if rule is None:
                text = W.vague_instruction(rng)
            else:
                text = W.compose_instruction(rule, rng, self.preface_p, self.closing_p)
            if text != avoid:
                return text
        return text


def _prompt_text(prompt: str | list[dict[str, Any]]) -> str:
    if isinstance(prompt, str):
        return prompt
    parts = []
    for msg in prompt:
        content = msg.get("content", "")
        if isinstance(content, list):  # OpenAI content parts
            content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(str(content))
    return "\n\n".join(parts)


def make_toy_teacher(noise: float = 0.2, seed: int = 0, **options: Any) -> ToyTeacher:
    """Factory behind the reflection-model name `toy-teacher`."""
    return ToyTeacher(noise=noise, seed=seed, **options)


def toy_instructions() -> dict[str, list[str]]:
    """Every instruction sentence of the toy world: paraphrases per rule, and the vague ones."""
    return W.list_instructions()
