"""The task verifier as a TRL reward function."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from p2o.tasks.base import Verdict, Verifier


def completion_text(completion: Any) -> str:
    """TRL passes conversational completions as `[{"role": "assistant", "content": ...}]`."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


class VerifierReward:
    """`reward(prompts, completions, answer=..., **kw) -> list[float]` calling the task verifier.

    One bad sample never stops a run: a verifier that raises scores 0 for that completion. The last
    batch's verdicts stay readable (`last_verdicts`) for the per-round sample log.
    """

    __name__ = "verifier"

    def __init__(self, verifier: Verifier, num_threads: int = 8):
        self.verifier = verifier
        self.num_threads = num_threads
        self.last_verdicts: list[Verdict] = []

    def _one(self, completion: Any, reference: Any) -> Verdict:
        try:
            return self.verifier(completion_text(completion), str(reference))
        except Exception as e:  # a verifier bug must not kill training: score 0, say why
            return Verdict(0.0, f"verifier error: {type(e).__name__}: {e}")

    def __call__(self, prompts: list, completions: list, answer: list, **kwargs: Any) -> list[float]:
        if self.num_threads > 1 and len(completions) > 1:
            with ThreadPoolExecutor(self.num_threads) as pool:
                verdicts = list(pool.map(self._one, completions, answer))
        else:
            verdicts = [self._one(c, a) for c, a in zip(completions, answer, strict=True)]
        self.last_verdicts = verdicts
        return [float(v.score) for v in verdicts]
