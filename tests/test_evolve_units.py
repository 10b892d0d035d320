"""Proposal validation (every rejection reason, the leak guard), the hard-sample split and
set-cover assignment on a small hand-made matrix. Pure functions: no model, no server."""

from __future__ import annotations

from collections import Counter

import pytest

from p2o.evolve import (
    REJECTION_REASONS,
    assign_templates,
    contains_answer,
    greedy_set_cover,
    split_hard_samples,
    validate_proposal,
)
from p2o.evolve.proposals import extract_fenced, strip_think
from p2o.tasks import Sample

GOOD = "Here is my proposal:\n```\nAdd the digits column by column, carrying tens.\n```\nGood luck."


def check(raw, current="old", answers=(), finish_reason=None, max_chars=200):
    return validate_proposal(
        raw, current=current, max_chars=max_chars, answers=answers, finish_reason=finish_reason
    )


def test_a_good_proposal_passes():
    c = check(GOOD)
    assert c.ok and c.text == "Add the digits column by column, carrying tens."
    # A language tag after the fence is not part of the template.
    assert check("```text\nUse carries.\n```").text == "Use carries."


@pytest.mark.parametrize(
    ("raw", "kwargs", "reason"),
    [
        (GOOD, {"finish_reason": "length"}, "truncated"),  # hit the reflection model's max_tokens
        ("Sure.\n```\nAdd the digits column by col", {}, "truncated"),  # a fence never closed
        ("<think>the rule is probably addition```", {}, "truncated"),  # thinking never ended
        ("Add the digits column by column.", {}, "no_fences"),
        ("```\n   \n```", {}, "empty"),
        ("```\n" + "x" * 201 + "\n```", {}, "too_long"),
        ("```\nThe answer is 582.\n```", {"answers": ["582"]}, "answer_leak"),
        ("```\nold\n```", {}, "unchanged"),
    ],
)
def test_each_rejection_reason(raw, kwargs, reason):
    c = check(raw, **kwargs)
    assert not c.ok and c.text is None and c.reason == reason
    assert reason in REJECTION_REASONS


def test_think_blocks_are_removed_before_extraction():
    raw = "<think>maybe ```wrong``` here</think>\n```\nCarry the one.\n```"
    assert check(raw).text == "Carry the one."
    # A chat template that opened <think> itself leaves only the closing tag in the reply.
    assert check("the rule is ... ```no``` </think>```\nCarry the one.\n```").text == "Carry the one."
    assert strip_think("a<think>b") == ("a", True)
    assert extract_fenced("no fences") == (None, "no_fences")


def test_leak_guard_multi_character_answers():
    assert contains_answer("The result is 582.", "582")
    assert contains_answer("result: 582", "\\boxed{582}")
    assert not contains_answer("Multiply 15823 by two.", "582")  # not as a token
    assert contains_answer("Use \\frac{1} {2} here", "\\frac{1}{2}")  # whitespace-insensitive
    assert contains_answer("write x^2+1", "x^2+1")


def test_leak_guard_single_character_answers_only_when_stated():
    # "Step 2" is ordinary prose; stating 2 as the result is a leak.
    assert not contains_answer("Step 2: add the digits.", "2")
    assert contains_answer("so the answer is 2.", "2")
    assert contains_answer("\\boxed{2}", "2")
    assert contains_answer("hence x = 2", "2")
    assert not contains_answer("anything", "")


def test_leak_guard_checks_every_shown_answer():
    raw = "```\nFor problems like these, the answer is 7 or 19.\n```"
    assert check(raw, answers=["582", "19"]).reason == "answer_leak"
    assert check(raw, answers=["582", "20"]).ok


def samples(n):
    return [Sample(f"s{i:03d}", f"p{i}", str(i)) for i in range(n)]


def test_split_sizes_follow_the_paper():
    dev, train = split_hard_samples(samples(100), dev_max_size=300, seed=0)
    assert (len(dev), len(train)) == (50, 50)  # min(300, n // 2)
    dev, train = split_hard_samples(samples(500), dev_max_size=300, seed=0)
    assert (len(dev), len(train)) == (250, 250)  # n // 2 below the cap (the authors' rule)
    dev, train = split_hard_samples(samples(900), dev_max_size=300, seed=0)
    assert (len(dev), len(train)) == (300, 600)  # dev capped at 300
    dev, train = split_hard_samples(samples(1), dev_max_size=300, seed=0)
    assert dev == train and len(dev) == 1
    a = split_hard_samples(samples(40), dev_max_size=300, seed=3)
    b = split_hard_samples(list(reversed(samples(40))), dev_max_size=300, seed=3)
    assert [s.sample_id for s in a[0]] == [s.sample_id for s in b[0]]  # seeded, order-independent
    assert not {s.sample_id for s in a[0]} & {s.sample_id for s in a[1]}


# Hand-made score matrix: 4 templates x 6 dev samples (1 = solved).
MATRIX = {
    "seed": {"d1": 0, "d2": 0, "d3": 0, "d4": 0, "d5": 0, "d6": 0},
    "A": {"d1": 1, "d2": 1, "d3": 1, "d4": 0, "d5": 0, "d6": 0},  # mean 0.5
    "B": {"d1": 0, "d2": 0, "d3": 1, "d4": 1, "d5": 0, "d6": 0},  # mean 1/3, adds d4
    "C": {"d1": 0, "d2": 0, "d3": 0, "d4": 1, "d5": 1, "d6": 0},  # mean 1/3, adds d4, d5
    "D": {"d1": 1, "d2": 0, "d3": 0, "d4": 0, "d5": 0, "d6": 0},  # subsumed by A
}


def test_greedy_set_cover_on_a_hand_made_matrix():
    # A covers 3; then C covers the 2 left (d4, d5) where B covers 1; d6 is solved by nobody.
    assert greedy_set_cover(MATRIX) == ["A", "C"]
    # Without A: B and C tie on 2 new samples and on mean, so the earlier one (B) goes first; then C
    # (mean 1/3) beats D (mean 1/6) on their one new sample each.
    assert greedy_set_cover(MATRIX, exclude={"A"}) == ["B", "C", "D"]
    assert greedy_set_cover({"seed": {"d1": 0.0}}) == []


def test_assignment_draws_from_the_templates_that_solved_each_sample():
    hard = ["d1", "d2", "d3", "d4", "d5", "d6", "train1"]
    out = assign_templates(MATRIX, hard, k=6, seed=0)
    assert set(out) == set(hard) and all(len(v) == 6 for v in out.values())
    assert set(out["d1"]) == {"A"}  # only A (of the cover A, C) solved d1
    assert set(out["d5"]) == {"C"}
    assert set(out["d4"]) <= {"C"}  # B solves d4 too but is not in the cover
    # Unsolved dev samples and train samples draw from the whole cover, weighted by mean score.
    pooled = Counter(
        t for sid in [f"x{i}" for i in range(400)] for t in assign_templates(MATRIX, [sid], 6, seed=1)[sid]
    )
    assert set(pooled) == {"A", "C"}
    assert 1.2 < pooled["A"] / pooled["C"] < 1.9  # weights 0.5 : 1/3 = 1.5
    # Seeded: the same seed gives the same draw; a sample's draw does not depend on the others.
    assert assign_templates(MATRIX, hard, k=6, seed=0) == out
    assert assign_templates(MATRIX, ["train1"], k=6, seed=0)["train1"] == out["train1"]
    assert assign_templates(MATRIX, hard, k=6, seed=1) != out


def test_assignment_with_scores_outside_dev_draws_from_the_templates_that_solved_them():
    # assign_score_all: the cover templates were also scored on the train-side samples.
    extra = {"A": {"train1": 0.0, "train2": 1.0}, "C": {"train1": 1.0, "train2": 0.0}}
    out = assign_templates(MATRIX, ["train1", "train2", "train3", "d1"], k=6, seed=0, solved_on=extra)
    assert set(out["train1"]) == {"C"} and set(out["train2"]) == {"A"}
    assert set(out["train3"]) <= {"A", "C"}  # not scored: the whole cover
    assert set(out["d1"]) == {"A"}
    # skip_unsolved: samples no cover template solved stay untemplated.
    kept = assign_templates(
        MATRIX, ["train1", "train3", "d6"], k=6, seed=0, solved_on=extra, skip_unsolved=True
    )
    assert set(kept) == {"train1"}
    # The cover and the weights still come from the dev matrix alone.
    assert assign_templates(MATRIX, ["d5"], k=6, seed=0, solved_on=extra) == assign_templates(
        MATRIX, ["d5"], k=6, seed=0
    )


def test_nothing_solved_means_nothing_assigned():
    assert assign_templates({"seed": {"d1": 0.0, "d2": 0.0}}, ["d1", "d2"], k=4) == {}
    with pytest.raises(ValueError, match="k must be"):
        assign_templates(MATRIX, ["d1"], k=0)
