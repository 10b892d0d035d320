"""The built-in math verifier and task: real math-verify runs in worker processes, no mocks."""

from __future__ import annotations

import json
import os
import pickle
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from p2o.tasks import Task, Verdict, get_task, get_verifier
from p2o.tasks.math import (
    MATH_PROMPT,
    MathVerifier,
    bracket_depth,
    last_boxed,
    math_messages,
    normalize_answer,
    shutdown_worker_pool,
    worker_pool_stats,
)

FIXTURES = Path(__file__).parent / "fixtures"


def boxed(answer: str) -> str:
    return (
        f"Working through the problem step by step gives the result.\nSo the answer is $\\boxed{{{answer}}}$."
    )


# (answer inside the box, reference, expected correctness) — written by hand, one idea each.
ANSWER_PAIRS = [
    # fractions and decimals, \frac vs /, \dfrac
    ("\\frac{1}{2}", "0.5", True),
    ("1/2", "\\frac{1}{2}", True),
    ("\\dfrac{3}{4}", "\\frac{3}{4}", True),
    ("\\tfrac{3}{4}", "0.75", True),
    ("0.75", "\\frac34", True),
    ("\\frac{7}{2}", "3.5", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("\\frac{-1}{2}", "-\\frac12", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("10.0", "10", True),
    ("\\left(\\frac{1}{2}\\right)", "\\frac12", True),
    ("\\frac{1}{3}", "0.3", False),
    ("0.333", "\\frac{1}{3}", False),
    ("10.01", "10", False),
    ("\\frac{2}{3}", "\\frac{3}{2}", False),
    # radicals
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
    ("3\\sqrt{3}", "\\sqrt{27}", True),
    ("\\sqrt[3]{27}", "3", True),
    ("\\sqrt{3}", "\\sqrt{2}", False),
    ("\\sqrt{2}", "2", False),
    # intervals and sets
    ("(1, 2]", "(1,2]", True),
    ("x \\in [-1, 3)", "[-1,3)", True),
    ("(3,4)\\cup(1,2)", "(1,2)\\cup(3,4)", True),
    ("\\{3, 2, 1\\}", "\\{1,2,3\\}", True),
    ("[1, 2]", "(1,2]", False),
    ("(-\\infty, 0]", "(-\\infty,0)", False),
    ("\\{1,2\\}", "\\{1,2,3\\}", False),
    ("(1,2)\\cup(3,5)", "(1,2)\\cup(3,4)", False),
    # degrees and percent
    ("30^\\circ", "30", True),
    ("30", "30^{\\circ}", True),
    ("45", "30^\\circ", False),
    ("25\\%", "0.25", True),
    ("30\\%", "25\\%", False),
    # \text{}, units, dollars, multiple choice
    ("5\\text{ cm}", "5", True),
    ("\\text{(B)}", "B", True),
    ("\\$18", "18", True),
    ("\\text{Tuesday}", "\\text{Monday}", False),
    ("7\\text{ cm}", "5", False),
    # thousands separators
    ("1,000", "1000", True),
    ("1{,}000{,}000", "1000000", True),
    ("12,345", "12345", True),
    ("1,001", "1000", False),
    ("1000", "1,000,000", False),
    # equations
    ("x=5", "5", True),
    ("x = -2", "-2", True),
    ("y = 2x + 1", "y=1+2x", True),
    ("x=6", "x=5", False),
    ("k = 4", "3", False),
    # expressions, powers, constants, complex numbers, matrices
    ("(x+1)^2", "x^2+2x+1", True),
    ("x^2+1", "(x+1)^2", False),
    ("2^{10}", "1024", True),
    ("\\binom{5}{2}", "10", True),
    ("1.5\\times10^{3}", "1500", True),
    ("\\pi/2", "\\frac{\\pi}{2}", True),
    ("\\frac{\\pi}{3}", "\\frac{\\pi}{6}", False),
    ("2\\pi", "\\pi", False),
    ("3+4i", "4i+3", True),
    ("3-4i", "3+4i", False),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\begin{pmatrix}1\\\\3\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
    ("\\infty", "\\infty", True),
    # plain integers, signs, garbage
    ("42", "42", True),
    ("3", "2", False),
    ("-3", "3", False),
    ("?!@#", "5", False),
    # the reference boxed or in $...$
    ("0.5", "\\boxed{\\frac{1}{2}}", True),
    ("1/2", "$\\frac{1}{2}$", True),
    ("2", "The answer is $\\boxed{3}$.", False),
]

# Whole completions: where the final answer is (and is not).
COMPLETION_PAIRS = [
    ("First I got \\boxed{3}, but that was wrong; correcting it: \\boxed{4}.", "4", True),
    ("\\boxed{4} at first, then \\boxed{3} after all.", "4", False),
    ("The answer is \\boxed{4}. Check: \\boxed{3", "4", True),  # an unclosed last box is not an answer
    ("\\fbox{7}", "7", True),
    ("\\boxed{\\boxed{7}}", "7", True),
    ("\\boxed {12}", "12", True),
    ("The set is \\boxed{\\{1, 2\\}}.", "\\{1,2\\}", True),
    ("The answer is 5.", "5", False),  # no box
    ("", "5", False),
    ("\\boxed{}", "5", False),
    ("\\boxed{$5$}", "5", True),
]

ALL_PAIRS = [(boxed(a), r, e) for a, r, e in ANSWER_PAIRS] + COMPLETION_PAIRS


@pytest.fixture(scope="module")
def verifier() -> MathVerifier:
    v = MathVerifier(timeout_s=5.0, cache_size=0)  # no cache: every call takes the real path
    v.warmup()
    return v


def test_enough_hand_written_pairs():
    assert len(ANSWER_PAIRS) + len(COMPLETION_PAIRS) >= 60
    labels = [e for _, _, e in ALL_PAIRS]
    assert labels.count(True) >= 25 and labels.count(False) >= 25


@pytest.mark.parametrize(("completion", "reference", "expected"), ALL_PAIRS)
def test_answer_pairs(verifier, completion, reference, expected):
    verdict = verifier(completion, reference)
    assert isinstance(verdict, Verdict)
    assert verdict.correct is expected, verdict.feedback
    assert verdict.score == (1.0 if expected else 0.0)


def test_sixteen_threads_give_the_same_verdicts(verifier):
    sequential = [verifier(c, r) for c, r, _ in ALL_PAIRS]
    jobs = [(i, c, r) for i, (c, r, _) in enumerate(ALL_PAIRS)] * 4
    random.Random(0).shuffle(jobs)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda job: (job[0], verifier(job[1], job[2])), jobs))
    assert len(results) == len(jobs)
    for i, verdict in results:
        assert verdict == sequential[i], ALL_PAIRS[i]


# ---------------------------------------------------------------- hostile input


def timed(fn, *args):
    start = time.monotonic()
    out = fn(*args)
    return out, time.monotonic() - start


def test_megabyte_answer_is_refused_fast(verifier):
    verdict, seconds = timed(verifier, "\\boxed{" + "1" * 1_000_000 + "}", "1")
    assert verdict.score == 0.0 and seconds < 1.0
    assert "1000000 characters long (limit 1000)" in verdict.feedback
    verdict, seconds = timed(verifier, "blah " * 200_000, "1")  # a megabyte and no box
    assert verdict.score == 0.0 and seconds < 1.0 and "No \\boxed{}" in verdict.feedback


def test_ten_thousand_nested_braces_are_refused_fast(verifier):
    verdict, seconds = timed(verifier, "\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}", "1")
    assert verdict.score == 0.0 and seconds < 1.0
    assert "nested 10000 levels deep (limit 32)" in verdict.feedback
    verdict, seconds = timed(verifier, "\\boxed{" + "(" * 10_000 + "1" + ")" * 10_000 + "}", "1")
    assert verdict.score == 0.0 and seconds < 1.0 and "nested" in verdict.feedback
    verdict, seconds = timed(verifier, "{" * 10_000 + "\\boxed{" * 10_000, "1")
    assert verdict.score == 0.0 and seconds < 1.0 and "No \\boxed{}" in verdict.feedback


def test_sympy_bomb_times_out_within_the_bound():
    v = MathVerifier(timeout_s=1.0, cache_size=0)
    verdict, seconds = timed(v, "\\boxed{9^{9^{9^{9}}}}", "9")
    assert verdict.score == 0.0 and seconds < 1.0 + 3.0  # worker start-up plus slack
    assert "timed out after 1 s" in verdict.feedback and verdict.extracted == "9^{9^{9^{9}}}"


def test_worker_past_the_hard_deadline_is_killed_and_replaced():
    v = MathVerifier(timeout_s=1.0, cache_size=0)
    v.warmup()
    v._soft_fraction = 10.0  # the worker's own timer would fire at 10 s: the caller must act at 1 s
    killed = worker_pool_stats()["killed"]
    verdict, seconds = timed(v, "\\boxed{10^{10^{10}}}", "7")
    assert verdict.score == 0.0 and "timed out" in verdict.feedback
    assert seconds < 1.0 + 1.0
    assert worker_pool_stats()["killed"] == killed + 1
    assert v("\\boxed{7}", "7.0").correct  # a fresh worker takes over


def test_bombs_from_threads_do_not_stall_the_others():
    v = MathVerifier(timeout_s=1.0, cache_size=0)
    v.warmup()
    jobs = [("\\boxed{2^{2^{2^{2^{2^{2}}}}}}", "4")] * 2 + [(boxed("\\frac{1}{2}"), "0.5")] * 20
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        verdicts = list(pool.map(lambda j: v(*j), jobs))
    assert [x.correct for x in verdicts] == [False, False] + [True] * 20
    assert time.monotonic() - start < 1.0 * 2 + 3.0


# ---------------------------------------------------------------- under load


def test_a_timeout_is_remembered_and_shared_by_threads_asking_at_once():
    v = MathVerifier(timeout_s=1.0)
    tower = "\\boxed{7^{8^{7^{8}}}}"
    start = time.monotonic()
    with ThreadPoolExecutor(6) as pool:  # a GRPO group repeating one answer: one worker computes it
        verdicts = list(pool.map(lambda _: v(tower, "3"), range(6)))
    assert time.monotonic() - start < 1.0 + 3.0  # one timeout (plus a worker start-up), not six
    assert all(x.score == 0.0 and "timed out after 1 s" in x.feedback for x in verdicts)
    verdict, seconds = timed(v, tower, "3")  # asked again later: remembered
    assert "timed out after 1 s" in verdict.feedback and seconds < 0.1
    assert MathVerifier(timeout_s=1.0, cache_size=0)._verify(("compare", "1", "2"))[0] == "ok"


def test_only_timeouts_that_really_computed_are_remembered():
    from p2o.tasks.math import _worth_remembering

    assert _worth_remembering(("ok", True, True), 4.0)
    assert _worth_remembering(("timeout", 3.9), 4.0)  # the worker computed most of the deadline
    assert _worth_remembering(("timeout",), 4.0)  # stuck past the deadline and killed
    assert not _worth_remembering(("timeout", 0.2), 4.0)  # starved by a loaded machine
    assert not _worth_remembering(("failed", "the worker was killed by SIGKILL"), 4.0)


def test_a_slow_answer_does_not_hold_normal_ones_back():
    shutdown_worker_pool()
    v = MathVerifier(timeout_s=4.0, max_workers=1, cache_size=0)
    v.warmup()
    jobs = [("\\boxed{9^{8^{9^{8}}}}", "2")] + [
        (boxed(f"\\frac{{{i}}}{{4}}"), f"{i / 4}") for i in range(1, 31)
    ]
    latencies: list[float] = []

    def one(job):
        if job[0].startswith("\\boxed{9"):
            return v(*job)
        time.sleep(0.02 * len(latencies))  # normal answers keep arriving while the tower runs
        verdict, seconds = timed(v, *job)
        latencies.append(seconds)
        return verdict

    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(one, jobs))
    assert verdicts[0].score == 0.0 and "timed out" in verdicts[0].feedback
    assert all(x.correct for x in verdicts[1:])
    # One worker, busy 3.4 s with the tower: without an extra worker, normal answers would wait that long.
    assert max(latencies) < 0.85 * 4.0, sorted(latencies)[-3:]
    stats = worker_pool_stats()
    assert stats["peak"] >= 2 and stats["size"] == 1
    shutdown_worker_pool()


def test_never_raises_on_odd_arguments(verifier):
    assert verifier(None, "5").score == 0.0  # type: ignore[arg-type]
    assert verifier("\\boxed{5}", 5).correct  # type: ignore[arg-type]
    assert "reference answer is empty" in verifier("\\boxed{5}", "").feedback
    assert verifier("\\boxed{\\frac{1}{0}}", "1").score == 0.0
    assert verifier("\\boxed{\\begin{pmatrix}}", "1").score == 0.0


# ---------------------------------------------------------------- feedback


def test_feedback_texts(verifier):
    assert verifier(boxed("4"), "4").feedback == "Your final answer 4 is correct."
    assert verifier(boxed("\\frac{8}{2}"), "4").feedback == "Your final answer \\frac{8}{2} is correct."
    wrong = verifier(boxed("3"), "\\boxed{4}")
    assert wrong.feedback == "Your final answer 3 is incorrect. The correct answer is 4."
    assert wrong.extracted == "3"
    assert (
        verifier("I think it's 4", "4").feedback == "No \\boxed{} answer was found. The correct answer is 4."
    )
    assert "empty" in verifier("\\boxed{ }", "4").feedback
    assert "could not be read" in verifier(boxed("?!@#"), "4").feedback


def test_feedback_without_gold():
    v = MathVerifier(include_gold_in_feedback=False, timeout_s=1.0)
    for completion in [boxed("3"), "no box here", boxed("?!@#"), "\\boxed{}", "\\boxed{9^{9^{9^{9}}}}"]:
        verdict = v(completion, "17")
        assert verdict.score == 0.0
        assert "17" not in verdict.feedback, verdict.feedback
    assert v(boxed("3"), "17").feedback == "Your final answer 3 is incorrect."


def test_require_boxed_false_reads_the_end_of_the_text():
    v = MathVerifier(require_boxed=False)
    assert v("So the final answer is $\\frac{1}{2}$.", "0.5").correct
    assert v("The answer is 7.", "7").correct
    assert not v("The answer is 8.", "7").correct
    assert v("\\boxed{7}", "7").correct  # a box still wins


# ---------------------------------------------------------------- pieces


def test_last_boxed_and_depth_are_linear_and_exact():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{2}{3}} c") == "\\frac{2}{3}"
    assert last_boxed("\\boxed{\\{1\\}}") == "\\{1\\}"
    assert last_boxed("\\\\{\\boxed{5}}") == "5"
    assert last_boxed("\\boxedx{5}") is None and last_boxed("no box") is None
    start = time.monotonic()
    assert last_boxed("\\boxed{" * 300_000) is None
    assert last_boxed("}" * 300_000 + "\\boxed{1}") == "1"
    assert time.monotonic() - start < 2.0
    assert bracket_depth("\\frac{\\sqrt{2}}{(1+[2])}") == 3 and bracket_depth("(1,2]") == 1


def test_exact_match_short_circuits_without_a_worker():
    v = MathVerifier(timeout_s=1.0)
    assert normalize_answer("$\\dfrac{1}{2}$") == normalize_answer("\\frac{1} {2}")
    assert normalize_answer("\\pi r") != normalize_answer("\\pir")
    shutdown_worker_pool()
    verdict, seconds = timed(v, boxed("\\left( 1, \\dfrac{1}{2} \\right)"), "(1,\\frac{1}{2})")
    assert verdict.correct and seconds < 0.05
    assert worker_pool_stats()["started"] == 0


def test_pool_survives_shutdown_fork_and_pickle():
    v = MathVerifier(timeout_s=5.0)
    shutdown_worker_pool()
    assert v(boxed("0.5"), "\\frac{1}{2}").correct  # starts a new pool
    pid = os.fork()
    if pid == 0:  # the child starts its own workers and never touches its parent's
        code = 0 if v(boxed("0.25"), "\\frac{1}{4}").correct else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert v(boxed("0.75"), "\\frac{3}{4}").correct
    clone = pickle.loads(pickle.dumps(v))
    assert clone(boxed("0.2"), "\\frac{1}{5}").correct


def test_bad_options_name_the_option():
    with pytest.raises(ValueError, match="timeout_s"):
        MathVerifier(timeout_s=0)
    with pytest.raises(ValueError, match="max_workers"):
        MathVerifier(max_workers=0)


# ---------------------------------------------------------------- registry and task


def test_registry_lookup():
    v = get_verifier("math")
    assert isinstance(v, MathVerifier) and v.require_boxed and v.include_gold_in_feedback
    v = get_verifier("math", timeout_s=2, include_gold_in_feedback=False)
    assert v.timeout_s == 2.0 and not v.include_gold_in_feedback
    assert get_verifier("p2o.tasks.math:MathVerifier", timeout_s=3).timeout_s == 3.0
    with pytest.raises(ValueError, match=r"unknown verifier 'maths'.*math"):
        get_verifier("maths")


def test_dotted_path_user_verifier(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    fn = get_verifier("p2o_plugin_verifiers:exact_match")
    assert fn(" 42 ", "42") == Verdict(1.0, "exact match", "42")
    made = get_verifier("p2o_plugin_verifiers:make_suffix_verifier", suffix="?")
    assert made("is it 42?", "42").correct and not made("42!", "42").correct
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        get_verifier("p2o_plugin_verifiers:nope")


def test_math_prompt_and_messages():
    assert MATH_PROMPT == "Let's think step by step and output the final answer within \\boxed{}."
    assert math_messages("What is 2+2?") == [
        {"role": "user", "content": MATH_PROMPT + "\nQuestion: What is 2+2?"}
    ]
    with_system = math_messages("What is 2+2?", system="You are careful.")
    assert with_system[0] == {"role": "system", "content": "You are careful."}
    assert with_system[1]["content"].endswith("Question: What is 2+2?")


def test_math_task():
    task = get_task("math")
    assert isinstance(task, Task) and task.name == "math"
    assert task.build_messages("1+1?") == math_messages("1+1?")
    assert task.dataset["problem_field"] == "problem" and task.dataset["answer_field"] == "answer"
    assert isinstance(task.verifier, MathVerifier) and task.chat_template_kwargs == {}
    task = get_task(
        "math",
        system="Be brief.",
        chat_template_kwargs={"enable_thinking": False},
        timeout_s=2.0,
        include_gold_in_feedback=False,
    )
    assert task.build_messages("1+1?")[0] == {"role": "system", "content": "Be brief."}
    assert task.chat_template_kwargs == {"enable_thinking": False}
    assert task.verifier.timeout_s == 2.0 and not task.verifier.include_gold_in_feedback
    assert task.verifier(boxed("2"), "2").correct
    with pytest.raises(TypeError, match=r"math task.*timeout"):
        get_task("math", timeout=3)


def test_bench_labels_agree_with_the_verifier(verifier):
    from p2o.tasks.bench import BENCH_ANSWERS, bench_pairs

    generated = bench_pairs(len(BENCH_ANSWERS) + 40, seed=1)[len(BENCH_ANSWERS) :]
    assert len({c for c, _, _ in generated}) == 40
    for completion, reference, expected in generated:
        assert verifier(completion, reference).correct is expected, (completion[-80:], reference)


def test_bench_runs(tmp_path, capsys):
    from p2o.tasks.bench import main

    out = tmp_path / "bench.json"
    argv = [
        "--n",
        "12",
        "--threads",
        "4",
        "--timeout",
        "2",
        "--normal",
        "24",
        "--slow",
        "1",
        "--slow-repeats",
        "3",
    ]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "verdicts/s" in printed and "p95 s" in printed
    result = json.loads(out.read_text())
    assert [run["accuracy"] for run in result["runs"]] == [1.0, 1.0]
    assert all(row["score"] == 0.0 and row["seconds"] < 2.0 + 1.0 for row in result["hostile"])
    mixed = result["mixed_load"]
    assert (mixed["normal"]["calls"], mixed["slow"]["calls"]) == (24, 3) and not mixed["disagreements"]
    # main() returned 0: no normal answer waited longer than the timeout plus a worker start-up.
    assert mixed["normal"]["max"] < 2.0 + 1.0 + max(1.0, result["worker_startup_s"])
