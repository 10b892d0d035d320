"""Mining hard samples for a standalone `p2o evolve`: K rollouts of the untemplated prompt x each.

A sample is hard when at most `hard_max_successes` of its K rollouts succeed (the paper's τ), exactly
the rule the trainer applies to its GRPO groups. During training the trainer mines as it goes; this is
for running a phase on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from p2o.policy import PolicyClient, PolicyRequestError
from p2o.policy.pool import thread_map
from p2o.tasks.base import Sample, Task


@dataclass
class MinedSample:
    sample: Sample
    successes: int
    k: int


def mine_hard_samples(
    client: PolicyClient,
    task: Task,
    samples: Sequence[Sample],
    *,
    k: int,
    temperature: float,
    max_tokens: int,
    max_successes: int,
    num_threads: int = 8,
    on_sample: Callable[[int], None] | None = None,
) -> tuple[list[MinedSample], list[MinedSample]]:
    """(hard, all): every sample's success count out of K, and the ones with ≤ `max_successes`."""

    def one(sample: Sample) -> int:
        try:
            c = client.chat(
                task.build_messages(sample.problem), temperature=temperature, max_tokens=max_tokens
            )
        except PolicyRequestError:
            return 0
        try:
            return int(task.verifier(c.text, sample.answer).correct)
        except Exception:
            return 0

    # A failed request or verdict scores 0 in `one`; anything else (the server is down) stops mining.
    rows = thread_map(
        one,
        samples,
        threads=num_threads,
        repeat=k,
        on_item=None if on_sample is None else lambda i, _: on_sample(1),
    )
    mined = [MinedSample(s, sum(row), k) for s, row in zip(samples, rows, strict=True)]
    return [m for m in mined if m.successes <= max_successes], mined
