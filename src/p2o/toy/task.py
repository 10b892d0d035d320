"""The toy world as a p2o task (`toy`) and verifier (`toy`).

The task generates its own data (`Task.splits`): easy and hard problems of one seeded world, with
stable ids such as `toy-s0-train-000123`. The prompt x is the bare problem in one user message; the
verifier wants the exact answer digits and its feedback names the gold answer.
"""

from __future__ import annotations

import random
import re
from functools import partial

from p2o.tasks.base import Messages, Sample, Task, Verdict
from p2o.tasks.registry import register_task, register_verifier
from p2o.toy import world as W

SPLITS = ("train", "train_hard", "train_easy", "test", "test_hard", "test_easy")

_SPECIAL_RE = re.compile(r"<\|[^|>]*\|>")
_ANSWER_RE = re.compile(r"\d(?:[ \t]*\d)*")


def extract_answer(completion: str) -> str | None:
    """The last run of digits in a completion (spaces between digits tolerated), or None."""
    runs = _ANSWER_RE.findall(_SPECIAL_RE.sub(" ", completion or ""))
    return re.sub(r"\s", "", runs[-1]) if runs else None


class ToyVerifier:
    """Exact-answer verifier: score 1.0 when the completion's final digits equal the reference."""

    def __call__(self, completion: str, reference: str) -> Verdict:
        gold = re.sub(r"\s", "", str(reference))
        got = extract_answer(completion)
        if got is None:
            return Verdict(0.0, f"No final answer was found. The correct answer is {gold}.", None)
        if got == gold:
            return Verdict(1.0, f"Your final answer {got} is correct.", got)
        return Verdict(0.0, f"Your final answer {got} is incorrect. The correct answer is {gold}.", got)


@register_verifier("toy")
def make_toy_verifier() -> ToyVerifier:
    return ToyVerifier()


def build_messages(problem: str) -> Messages:
    """x: the bare problem in one user message (templates are added by `render_augmented`)."""
    return [{"role": "user", "content": problem}]


def make_samples(
    world: W.ToyWorld, split: str, n: int, hard_fraction: float = 0.5, kind: str | None = None
) -> list[Sample]:
    """`n` samples of `split`; train splits draw from the training part of problem space, test
    splits from the held-out part. `kind` ("hard"/"easy") fixes the kind, else `hard_fraction`.
    """
    held_out = split.startswith("test")
    rng = random.Random(f"p2o-toy-data-{world.seed}-{split}")
    # Easy problems use every operator whose rule the policy knows unprompted, the hard operators'
    # twins included: GRPO on them keeps the rules the templates elicit in use (docs/toy.md).
    ops_of = {"hard": sorted(world.hard), "easy": sorted(world.easy) + sorted(world.familiar)}
    out: list[Sample] = []
    seen: set[str] = set()
    while len(out) < n:
        k = kind or ("hard" if rng.random() < hard_fraction else "easy")
        op = rng.choice(ops_of[k])
        problem = world.problem(rng, op, held_out=held_out)
        if problem in seen:
            continue
        seen.add(problem)
        meta = {"kind": k, "operator": op, "rule": world.operators[op], "seed": world.seed}
        out.append(Sample(f"toy-s{world.seed}-{split}-{len(out):06d}", problem, world.answer(problem), meta))
    return out


def toy_splits(
    world: W.ToyWorld, split: str, n_train: int, n_test: int, hard_fraction: float
) -> list[Sample]:
    if split == "train":
        return make_samples(world, "train", n_train, hard_fraction)
    if split in ("train_hard", "train_easy"):
        return [
            s for s in make_samples(world, "train", n_train, hard_fraction) if s.meta["kind"] == split[6:]
        ]
    if split in ("test_hard", "test_easy"):
        return make_samples(world, split, n_test, kind=split[5:])
    if split == "test":
        n_hard = round(n_test * hard_fraction)
        hard = make_samples(world, "test_hard", n_hard, kind="hard")
        easy = make_samples(world, "test_easy", n_test - n_hard, kind="easy")
        mixed = hard + easy
        random.Random(f"p2o-toy-data-{world.seed}-test-mix").shuffle(mixed)
        return mixed
    raise ValueError(f"toy task: unknown split {split!r}; choose one of {', '.join(SPLITS)}")


@register_task("toy")
def make_toy_task(
    seed: int = 0,
    n_train: int = 512,
    n_test: int = 256,
    hard_fraction: float = 0.5,
    digits: int = W.DIGITS,
    n_easy: int = W.N_EASY,
    n_hard: int = W.N_HARD,
    n_unknown: int = W.N_UNKNOWN,
) -> Task:
    """The toy task of world `seed` (its settings must match the toy model's build; defaults do).

    Splits: train (`n_train`, `hard_fraction` hard), train_hard / train_easy (its two parts),
    test (`n_test` held-out mix), test_hard / test_easy (`n_test` each; `test` is drawn from them).
    """
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"toy task: hard_fraction must be in [0, 1] (got {hard_fraction})")
    if n_train < 0 or n_test < 0:
        raise ValueError(f"toy task: n_train and n_test must be >= 0 (got {n_train}, {n_test})")
    world = W.make_world(seed, digits, n_easy, n_hard, n_unknown)
    return Task(
        name="toy",
        build_messages=build_messages,
        verifier=ToyVerifier(),
        dataset={},
        description=(
            f"Toy world (seed {seed}): digit-wise operator problems 'a OP b' on {digits}-digit numbers; "
            f"{len(world.known)} easy operators the policy knows, {len(world.hard)} hard ones only an "
            "instruction naming their rule unlocks."
        ),
        splits=partial(toy_splits, world, n_train=n_train, n_test=n_test, hard_fraction=hard_fraction),
        default_model=partial(
            _default_model, seed=seed, digits=digits, n_easy=n_easy, n_hard=n_hard, n_unknown=n_unknown
        ),
        group_of=partial(operator_group, world),
    )


def operator_group(world: W.ToyWorld, sample: Sample) -> str:
    """`hard ⊕ add`: the operator's role in the world (easy / familiar / hard), symbol and rule."""
    op = sample.meta.get("operator") or (W.parse_problem(sample.problem) or ("", "?", ""))[1]
    if op not in world.operators:
        return f"other {op}"
    return f"{world.kind_of(op)} {op} {world.operators[op]}"


def _default_model(seed: int, output: str | None = None, **world: int) -> str:
    """The toy build of world `seed` in `output` (None: the cache); built on first use, ~3 min, then
    reused in seconds."""
    from p2o.toy.build import ensure_toy_model

    defaults = {"digits": W.DIGITS, "n_easy": W.N_EASY, "n_hard": W.N_HARD, "n_unknown": W.N_UNKNOWN}
    overrides = {k: v for k, v in world.items() if v != defaults[k]}
    if output is not None:
        overrides["output"] = output
    return str(ensure_toy_model(seed=seed, **overrides))
