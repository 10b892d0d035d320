"""Which rule a policy's answers follow, operator by operator (`p2o toy rules`).

A partial result on the toy world reads "rule X learned, rule Y not"; when a known operator erodes,
the question is what it answers instead. For every operator of the world this greedily answers the
held-out problems without instruction and counts, per rule, the fraction of answers that rule
gives. Rules that agree on a problem share it (sub and absdiff agree whenever every digit of a is
at least b's), so the fractions of one operator can sum to more than 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2o.toy import world as W

# The rules an operator can hide (the instruction-only copy rules would match nothing useful).
RULE_ORDER = tuple(name for name, rule in W.RULES.items() if rule.hideable)


def answer_rules(model_dir: str | Path, seed: int, n_test: int = 600) -> dict[str, dict[str, float]]:
    """`{"familiar □ sub": {"sub": 0.39, "absdiff": 0.26, ...}, ...}` for the policy in `model_dir`
    on world `seed`'s held-out problems (easy, familiar and hard operators)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from p2o.tasks import get_task
    from p2o.toy.measure import _digits, generate, prompt_text

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    task = get_task("toy", seed=seed, n_test=n_test)
    assert task.group_of is not None
    groups: dict[str, list[Any]] = {}
    for s in task.splits("test_easy") + task.splits("test_hard"):
        groups.setdefault(task.group_of(s), []).append(s)
    out: dict[str, dict[str, float]] = {}
    for label in sorted(groups):
        samples = groups[label]
        ids = generate(
            model, tokenizer, [prompt_text(s.problem) for s in samples], max_new_tokens=W.DIGITS + 2
        )
        answers = [_digits(tokenizer.decode(row, skip_special_tokens=True)) for row in ids]
        counts = dict.fromkeys(RULE_ORDER, 0)
        for s, answer in zip(samples, answers, strict=True):
            a, _, b = W.parse_problem(s.problem) or ("", "", "")
            for rule in RULE_ORDER:
                counts[rule] += answer == W.apply_rule(rule, a, b)
        out[label] = {r: round(c / len(samples), 3) for r, c in counts.items() if c}
    return out
