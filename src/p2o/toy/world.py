"""The toy world: digit-wise operator problems, the rules behind the operators, and their language.

A problem is `a OP b` on two numbers of `digits` digits ("3472 ⊕ 2195"); the answer has the same
number of digits, each computed from the two digits in the same place by the rule the operator
stands for (⊕ = add mod 10 → "5567"). Six rules can hide behind an operator (add, sub, mul mod 10,
max, min, absolute difference); two more (copy the first / second number) exist only as
instructions, because a blind guess would find them too often. A seed decides which symbol plays
which role and which rules the easy and hard operators hide:

- *easy* operators: their rule is seen without any instruction during pre-training;
- *familiar* operators: the same, one for each rule a hard operator hides: the twin of a hard
  operator. The task's easy problems use easy and familiar operators alike (`ToyWorld.known`), so
  GRPO on easy problems keeps every rule a template must elicit in use while distillation moves the
  hard symbols onto it;
- *hard* operators: seen during pre-training only inside an instruction that names a rule, so
  without one the policy cannot know their rule (P²O's hard samples). Each hides the rule of a
  familiar operator: the policy can compute it unprompted, but does not know that this symbol asks
  for it — the situation P²O is for (a template elicits a skill the model has; distillation teaches
  it to use the skill unprompted). Why this design: see docs/toy.md;
- *unknown* operators (many): seen without instruction only with random answer digits. They teach
  the policy that an unfamiliar operator means "spread-out digits" rather than some confident
  guess, so a hard operator gives the right digits a small but non-zero probability: plain GRPO
  starves, yet the Context Ratio Mask keeps the tokens distillation must learn.

Rules are named in natural language by several paraphrases; an instruction is an optional preface,
one paraphrase and an optional closing remark. Vague instructions (no rule) are also part of the
language: the scripted teacher sometimes writes them, and the policy learned to ignore them.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rule:
    """A digit-wise rule: `fn(a, b)` maps the two digits in one place to the answer digit."""

    name: str
    fn: Callable[[int, int], int]
    summary: str
    paraphrases: tuple[str, ...]
    # False for rules a blind guess finds too easily (copying a number): instruction-only, never the
    # rule behind an operator.
    hideable: bool = True


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule(
            "add",
            lambda a, b: (a + b) % 10,
            "last digit of the sum",
            (
                "Add the two digits in each place and keep only the last digit of the sum.",
                "For every position, write the last digit of the sum of the two digits.",
                "Sum the digits that stand in the same place, modulo ten.",
                "Each answer digit is the sum of the two digits in that place, without carrying.",
                "Add digit by digit and drop any carry.",
            ),
        ),
        Rule(
            "sub",
            lambda a, b: (a - b) % 10,
            "first minus second, modulo ten",
            (
                "Subtract the second digit from the first in each place, modulo ten.",
                "For every position, take the first digit minus the second digit, and add ten if it is negative.",
                "Each answer digit is the first digit minus the second one, wrapped around modulo ten.",
                "Take the first digit minus the second digit at each place, without borrowing.",
            ),
        ),
        Rule(
            "mul",
            lambda a, b: (a * b) % 10,
            "last digit of the product",
            (
                "Multiply the two digits in each place and keep only the last digit of the product.",
                "For every position, write the last digit of the product of the two digits.",
                "Each answer digit is the product of the two digits in that place, modulo ten.",
                "Multiply digit by digit and keep the ones digit.",
            ),
        ),
        Rule(
            "max",
            lambda a, b: max(a, b),
            "the larger digit",
            (
                "In each place, write the larger of the two digits.",
                "For every position, keep the bigger digit.",
                "Each answer digit is the maximum of the two digits in that place.",
                "Compare the digits place by place and take the greater one.",
            ),
        ),
        Rule(
            "min",
            lambda a, b: min(a, b),
            "the smaller digit",
            (
                "In each place, write the smaller of the two digits.",
                "For every position, keep the lower digit.",
                "Each answer digit is the minimum of the two digits in that place.",
                "Compare the digits place by place and take the lesser one.",
            ),
        ),
        Rule(
            "absdiff",
            lambda a, b: abs(a - b),
            "the distance between the digits",
            (
                "In each place, write the distance between the two digits.",
                "For every position, subtract the smaller digit from the larger one.",
                "Each answer digit is the absolute difference of the two digits in that place.",
                "Compare the digits place by place and write how far apart they are.",
            ),
        ),
        Rule(
            "first",
            lambda a, b: a,
            "copy the first number",
            (
                "Copy the first number.",
                "In each place, write the digit of the first number.",
                "The answer is the first number, digit for digit.",
            ),
            hideable=False,
        ),
        Rule(
            "second",
            lambda a, b: b,
            "copy the second number",
            (
                "Copy the second number.",
                "In each place, write the digit of the second number.",
                "The answer is the second number, digit for digit.",
            ),
            hideable=False,
        ),
    )
}

# Optional sentences around a rule paraphrase; alone they make a *vague* instruction (no rule).
PREFACES: tuple[str, ...] = (
    "Work through the two numbers digit by digit, from left to right.",
    "Treat the sign as a rule that combines the digits in the same place.",
    "Line up the two numbers and solve one position at a time.",
    "The sign stands for a rule applied to each pair of digits.",
)
CLOSINGS: tuple[str, ...] = (
    "Write only the answer digits.",
    "The answer has as many digits as each number.",
    "Keep every place separate.",
)
# Instructions whose answer is the operator symbol itself (pre-training only, `sign_share`): they
# make the policy tell every symbol apart without saying what any symbol means. Their words are
# already the language's, so the vocabulary is the same with or without them.
SIGN_INSTRUCTIONS: tuple[str, ...] = (
    "Copy the sign.",
    "Write only the sign.",
    "The answer is the sign.",
)
VAGUE: tuple[str, ...] = (
    *PREFACES,
    *CLOSINGS,
    "Think carefully about what the sign means.",
    "Look closely at both numbers before answering.",
    "Combine the two numbers digit by digit.",
    "Figure out the rule behind the sign and apply it.",
)

# The operator symbols; a seed shuffles their roles. Each is one token of the toy tokenizer.
# Many of them, so that "an operator other than the few easy ones" is a class the policy learns from
# the unknown operators, and hard operators (shown without an instruction only as unknown ones are,
# answered with random digits) fall into it.
SYMBOLS: tuple[str, ...] = tuple("⊕⊖⊗⊘⊙⊚⊛⊜⊝⊞⊟⊠⊡♠♡♢♣♤♥♦♧■□▢▣▤▥▦▧▨▩▲△▶▷▼▽◀◁◆◇◈◉◊○◌◍◎●◐◑◒◓◔◕◖◗◢◣◤◥")

# The default world (the toy model's build and the `toy` task share these). Four digits: a blind
# guess succeeds once in 10^4 rollouts. With three (one in 10^3), GRPO with 2K = 12 rollouts found
# enough lucky successes on one of two worlds to bootstrap a hard operator (held-out hard 0.50).
DIGITS, N_EASY, N_HARD, N_UNKNOWN = 4, 3, 3, 48
# A rule whose digits are too skewed to hide behind a hard operator: (a·b) mod 10 is 0 for 27% of
# digit pairs, so answering zeros succeeds on ~2% of problems and plain GRPO bootstraps from there
# (a world whose hard operator hid mul: GRPO reached 0.94 on it, 0.33 on all hard problems).
GUESSABLE = "mul"

_PROBLEM_RE = re.compile(
    r"(\d(?:[ \t]*\d)*)\s*(" + "|".join(map(re.escape, SYMBOLS)) + r")\s*(\d(?:[ \t]*\d)*)"
)


def apply_rule(rule: str, a: str, b: str) -> str:
    """The answer of `a OP b` when OP stands for `rule` (digit strings of equal length)."""
    if len(a) != len(b):
        raise ValueError(f"operands {a!r} and {b!r} have different numbers of digits")
    fn = RULES[rule].fn
    return "".join(str(fn(int(x), int(y))) for x, y in zip(a, b, strict=True))


def parse_problem(text: str) -> tuple[str, str, str] | None:
    """The first `a OP b` in `text` as (a, op, b), digits without spaces; None if there is none."""
    m = _PROBLEM_RE.search(text)
    if m is None:
        return None
    return re.sub(r"\s", "", m.group(1)), m.group(2), re.sub(r"\s", "", m.group(3))


def find_problems(text: str) -> list[tuple[str, str, str]]:
    """Every `a OP b` in `text`, in order."""
    return [
        (re.sub(r"\s", "", m.group(1)), m.group(2), re.sub(r"\s", "", m.group(3)))
        for m in _PROBLEM_RE.finditer(text)
    ]


def format_problem(a: str, op: str, b: str) -> str:
    return f"{a} {op} {b}"


def compose_instruction(
    rule: str, rng: random.Random, preface_p: float = 0.25, closing_p: float = 0.25
) -> str:
    """An instruction naming `rule`: [preface] paraphrase [closing], the parts drawn by `rng`."""
    parts = []
    if rng.random() < preface_p:
        parts.append(rng.choice(PREFACES))
    parts.append(rng.choice(RULES[rule].paraphrases))
    if rng.random() < closing_p:
        parts.append(rng.choice(CLOSINGS))
    return " ".join(parts)


def vague_instruction(rng: random.Random) -> str:
    """An instruction that names no rule (one or two vague sentences)."""
    first = rng.choice(VAGUE)
    if rng.random() < 0.3:
        second = rng.choice(VAGUE)
        if second != first:
            return f"{first} {second}"
    return first


def list_instructions() -> dict[str, list[str]]:
    """The world's language: each rule's paraphrases, plus the vague sentences under "vague"."""
    out = {name: list(r.paraphrases) for name, r in RULES.items()}
    out["vague"] = list(VAGUE)
    return out


def rule_of_instruction(text: str) -> str | None:
    """The rule a text names (the first paraphrase it contains), or None (vague or foreign text)."""
    for name, r in RULES.items():
        if any(p in text for p in r.paraphrases):
            return name
    return None


def corpus() -> Iterator[str]:
    """Every sentence the world's language has (for the tokenizer's vocabulary)."""
    for r in RULES.values():
        yield from r.paraphrases
    yield from VAGUE
    yield from SIGN_INSTRUCTIONS


def is_held_out(problem: str) -> bool:
    """A fixed fifth of all problems is held out: never in pre-training or the train split."""
    return zlib.crc32(problem.encode()) % 5 == 0


@dataclass(frozen=True)
class ToyWorld:
    """One seeded assignment of operators to roles and rules.

    `easy`, `familiar` and `hard` map operator symbols to rule names; `unknown` operators have no
    rule. The task's easy problems use the `known` operators (easy and familiar).
    """

    seed: int
    digits: int
    easy: dict[str, str]
    hard: dict[str, str]
    unknown: tuple[str, ...]
    familiar: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def operators(self) -> dict[str, str]:
        return {**self.easy, **self.familiar, **self.hard}

    @property
    def known(self) -> dict[str, str]:
        """Operators whose rule the policy sees without instruction: the task's easy problems."""
        return {**self.easy, **self.familiar}

    def kind_of(self, op: str) -> str:
        if op in self.easy:
            return "easy"
        if op in self.familiar:
            return "familiar"
        if op in self.hard:
            return "hard"
        if op in self.unknown:
            return "unknown"
        raise ValueError(f"operator {op!r} is not part of this world (seed {self.seed})")

    def answer(self, problem: str) -> str:
        """The gold answer of a problem of this world (easy or hard operator)."""
        parsed = parse_problem(problem)
        if parsed is None:
            raise ValueError(f"{problem!r} is not a problem 'a OP b' of the toy world")
        a, op, b = parsed
        if op not in self.operators:
            raise ValueError(f"operator {op!r} in {problem!r} has no rule in this world (seed {self.seed})")
        return apply_rule(self.operators[op], a, b)

    def operands(self, rng: random.Random) -> tuple[str, str]:
        def number() -> str:
            return str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(self.digits - 1))

        return number(), number()

    def problem(self, rng: random.Random, op: str, held_out: bool | None = False) -> str:
        """A random problem with operator `op`; `held_out` True/False draws from that part only."""
        while True:
            a, b = self.operands(rng)
            text = format_problem(a, op, b)
            if held_out is None or is_held_out(text) == held_out:
                return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def rule_agreement(x: str, y: str) -> float:
    """Fraction of digit pairs (a, b) on which rules `x` and `y` give the same digit."""
    return (
        sum(
            apply_rule(x, str(a), str(b)) == apply_rule(y, str(a), str(b))
            for a in range(10)
            for b in range(10)
        )
        / 100
    )


@functools.cache
def _least_agreeing_splits(rules: tuple[str, ...], n: int) -> list[tuple[str, ...]]:
    """The `n`-subsets of `rules` whose greatest agreement with a rule outside them is smallest."""

    def cross(subset: tuple[str, ...]) -> float:
        return max(rule_agreement(x, y) for x in subset for y in rules if y not in subset)

    subsets = list(itertools.combinations(rules, n))
    best = min(cross(c) for c in subsets)
    return [c for c in subsets if cross(c) == best]


def make_world(
    seed: int = 0,
    digits: int = DIGITS,
    n_easy: int = N_EASY,
    n_hard: int = N_HARD,
    n_unknown: int = N_UNKNOWN,
) -> ToyWorld:
    """The world of `seed`: which symbols are easy / familiar / hard / unknown, which rules they hide.

    The easy operators get a seeded pick among the sets of `n_easy` hideable rules that agree least
    with the other rules (`rule_agreement`): with 3 easy rules, {add, sub, absdiff} or {mul, max,
    min}, whose rules agree with the other side's on at most 19% of digits, where sub and absdiff
    agree on 60%. A hard rule close to an easy one would let plain GRPO solve hard problems by
    drifting toward the easy rule. `GUESSABLE` (mul) stays with the easy rules whenever such a set
    allows it, so the default worlds hide add, sub and absdiff. The remaining rules go to the
    familiar operators (one per rule, at most `n_hard`), and the hard operators hide the familiar
    rules in a seeded order (cycling when `n_hard` exceeds them).
    """
    if digits < 2:
        raise ValueError(f"digits must be >= 2 so that a blind guess rarely succeeds (got {digits})")
    if n_easy < 1 or n_hard < 1 or n_unknown < 1:
        raise ValueError(f"n_easy, n_hard and n_unknown must be >= 1 (got {n_easy}, {n_hard}, {n_unknown})")
    hideable = [name for name, r in RULES.items() if r.hideable]
    if n_easy >= len(hideable):
        raise ValueError(
            f"n_easy must be < {len(hideable)}: the hard operators need rules the easy ones do not have "
            f"(got {n_easy})"
        )
    n_familiar = min(n_hard, len(hideable) - n_easy)
    if n_easy + n_familiar + n_hard + n_unknown > len(SYMBOLS):
        raise ValueError(
            f"n_easy + n_hard (x2, familiar operators) + n_unknown must be <= {len(SYMBOLS)} symbols"
        )
    rng = random.Random(f"p2o-toy-world-{seed}")
    symbols = list(SYMBOLS)
    rng.shuffle(symbols)
    splits = _least_agreeing_splits(tuple(hideable), n_easy)
    easy_rules = list(rng.choice(splits))
    if GUESSABLE not in easy_rules:
        easy_rules = list(next((c for c in splits if GUESSABLE in c), easy_rules))
    rest = [r for r in hideable if r not in easy_rules]
    rng.shuffle(easy_rules)
    rng.shuffle(rest)
    rules = easy_rules + rest
    easy = dict(zip(symbols[:n_easy], rules[:n_easy], strict=True))
    at = n_easy
    familiar = dict(zip(symbols[at : at + n_familiar], rules[n_easy : n_easy + n_familiar], strict=True))
    at += n_familiar
    known = list(familiar.values())
    rng.shuffle(known)
    hard = dict(zip(symbols[at : at + n_hard], [known[i % n_familiar] for i in range(n_hard)], strict=True))
    at += n_hard
    unknown = tuple(symbols[at : at + n_unknown])
    return ToyWorld(seed=seed, digits=digits, easy=easy, hard=hard, unknown=unknown, familiar=familiar)
