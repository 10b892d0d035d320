"""The pieces a task is made of: a verdict, the verifier protocol and a task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Verdict:
    """A verifier's judgement of one completion.

    `score` is the reward (1.0 correct, 0.0 wrong for the built-in verifiers); `feedback` is a
    sentence a reflection model can act on ("Your final answer 3 is incorrect. The correct answer
    is 4."); `extracted` is the final answer the verifier read from the completion, if any.
    """

    score: float
    feedback: str
    extracted: str | None = None

    @property
    def correct(self) -> bool:
        return self.score >= 1.0


@runtime_checkable
class Verifier(Protocol):
    """`(completion, reference) -> Verdict`. Must never raise for one sample: score it 0 and say why."""

    def __call__(self, completion: str, reference: str) -> Verdict: ...


PromptBuilder = Callable[[str], Messages]


@dataclass
class Sample:
    """One problem with its reference answer and a stable id (the key of all hard-sample stats)."""

    sample_id: str
    problem: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Task:
    """A dataset source, a prompt builder and a verifier.

    `build_messages(problem)` returns the chat messages of the original prompt x (the one renderer
    `p2o.templates.render_augmented` turns them into x̃). `dataset` holds the arguments of
    `p2o.tasks.data.load_samples` used when no dataset is given on the command line.
    """

    name: str
    build_messages: PromptBuilder
    verifier: Verifier
    dataset: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # Tasks that generate their own data (the toy world) return the samples of a named split
    # ("train", "test", "test_hard", "test_easy", ...); None = data must come from a file or hub id.
    splits: Callable[[str], list[Sample]] | None = None
    # Keyword arguments passed to the tokenizer's apply_chat_template wherever a prompt is rendered.
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    # The policy to use when none is named (the toy world builds its own); None = the user must name one.
    default_model: Callable[[], str] | None = None
    # A label that groups samples in reports (held-out accuracy and each round's record per group),
    # so that a partial result reads "rule X learned, rule Y not"; the toy world labels each sample
    # with its operator's role, symbol and rule. None = no breakdown.
    group_of: Callable[[Sample], str] | None = None
