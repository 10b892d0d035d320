"""Benchmark of the math verifier: verdicts per second from one thread and from many, and accuracy.

    python -m p2o.tasks.bench [--n 300] [--threads 16] [--timeout 5] [--workers N] [--out bench.json]
    python -m p2o.tasks.bench --mixed-only [--normal 240] [--slow 4] [--slow-repeats 4]

Runs `--n` verdicts over a built-in set of labelled (completion, reference) pairs — fractions,
radicals, intervals, sets, units, equations, wrong answers, missing boxes — first from one thread,
then from `--threads` threads at once, with the verdict cache off so every verdict takes the real
path; for comparison, the same verdicts by math-verify called directly in the main thread (what
the worker pool costs; math-verify cannot run with its timeouts from other threads at all).
Accuracy is the share of verdicts that match the labels, so the benchmark doubles as a
correctness check: it exits with status 1 when any verdict disagrees. Then it times three hostile
inputs (a 1 MB answer, 10 000 nested braces, a sympy power tower), each of which must come back
scored 0 within the timeout.

Last, the verifier under load (`--mixed-only` runs just this part): `--threads` threads call one
verifier (verdict cache on, as in training) with normal answers mixed with sympy power towers that
run into the timeout, each tower repeated as GRPO repeats an answer across a group. It prints the
latency of each call, p50/p95/max, for the normal answers and for the towers, and flags a normal
answer held back longer than the timeout plus a worker start-up.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from p2o.tasks.math import (
    DEFAULT_TIMEOUT_S,
    MathVerifier,
    last_boxed,
    normalize_answer,
    reference_answer,
    worker_pool_stats,
)

# (final answer as the model writes it, reference, correct?)
BENCH_ANSWERS: list[tuple[str, str, bool]] = [
    ("\\frac{3}{8}", "0.375", True),
    ("0.6", "\\frac{3}{5}", True),
    ("\\dfrac{5}{2}", "2.5", True),
    ("-\\frac{7}{4}", "-1.75", True),
    ("\\frac{6}{9}", "\\frac{2}{3}", True),
    ("0.66", "\\frac{2}{3}", False),
    ("\\frac{5}{3}", "\\frac{3}{5}", False),
    ("4\\sqrt{3}", "\\sqrt{48}", True),
    ("\\frac{\\sqrt{6}}{3}", "\\sqrt{\\frac{2}{3}}", True),
    ("2\\sqrt{5}", "\\sqrt{10}", False),
    ("[2, 5)", "[2,5)", True),
    ("(0, \\infty)", "x > 0", True),
    ("(2, 5]", "[2,5)", False),
    ("\\{-1, 4\\}", "\\{4,-1\\}", True),
    ("\\{0, 1\\}", "\\{0,1,2\\}", False),
    ("60^\\circ", "60", True),
    ("120", "60", False),
    ("12.5\\%", "0.125", True),
    ("15\\text{ meters}", "15", True),
    ("\\text{(C)}", "C", True),
    ("\\text{(D)}", "C", False),
    ("2,024", "2024", True),
    ("3{,}600", "3600", True),
    ("2,025", "2024", False),
    ("x = 7", "7", True),
    ("a=3", "a = 4", False),
    ("y = -x + 2", "y=2-x", True),
    ("(a-b)^2", "a^2-2ab+b^2", True),
    ("a^2+b^2", "(a+b)^2", False),
    ("3^{5}", "243", True),
    ("\\binom{6}{3}", "20", True),
    ("\\binom{6}{2}", "20", False),
    ("\\frac{\\pi}{4}", "\\pi/4", True),
    ("\\frac{3\\pi}{4}", "\\frac{\\pi}{4}", False),
    ("2-3i", "-3i+2", True),
    ("\\begin{pmatrix}2\\\\-1\\end{pmatrix}", "\\begin{pmatrix}2\\\\-1\\end{pmatrix}", True),
    ("\\log_2 32", "5", True),
    ("1 + \\sqrt{2}", "\\sqrt{2}+1", True),
    ("100", "100", True),
    ("99", "100", False),
    ("\\text{no solution}", "3", False),
]

_STEPS = [
    "We start by writing down what is given.",
    "Substituting the known values into the equation gives a simpler expression.",
    "Simplifying both sides, we collect like terms.",
    "Let me double-check this step by plugging the value back in.",
    "Using the identity $(a+b)^2 = a^2 + 2ab + b^2$ here helps.",
    "The constraint $x \\ge 0$ rules out the negative root.",
    "So the intermediate result is $\\frac{12}{4} = 3$, which we use next.",
    "Hmm, wait. Let me reconsider the boundary case.",
]


def _fraction(rng: random.Random, ok: bool) -> tuple[str, str]:
    b = rng.choice([2, 4, 5, 8, 10, 16, 20, 25, 40, 50])
    a = rng.choice([k for k in range(1, 4 * b) if math.gcd(k, b) == 1])
    shown = a if ok else a + 1
    return f"\\frac{{{a}}}{{{b}}}", f"{shown / b:g}"


def _radical(rng: random.Random, ok: bool) -> tuple[str, str]:
    k, m = rng.randint(2, 12), rng.choice([2, 3, 5, 6, 7, 10, 11])
    return f"{k}\\sqrt{{{m}}}", f"\\sqrt{{{k * k * m + (0 if ok else 1)}}}"


def _interval(rng: random.Random, ok: bool) -> tuple[str, str]:
    a = rng.randint(-50, 50)
    b = a + rng.randint(1, 50)
    return f"({a}, {b}]", f"({a},{b}]" if ok else f"[{a},{b}]"


def _finite_set(rng: random.Random, ok: bool) -> tuple[str, str]:
    items = rng.sample(range(-30, 60), rng.randint(2, 5))
    answer = ", ".join(map(str, items))
    reference = sorted(items) if ok else [*sorted(items)[1:], max(items) + 1]
    return f"\\{{{answer}\\}}", "\\{" + ",".join(map(str, reference)) + "\\}"


def _degrees(rng: random.Random, ok: bool) -> tuple[str, str]:
    a = rng.randint(1, 359)
    return f"{a}^\\circ", str(a if ok else a + 5)


def _percent(rng: random.Random, ok: bool) -> tuple[str, str]:
    p = rng.randint(1, 99)
    return f"{p}\\%", f"{(p if ok else p + 1) / 100:g}"


def _thousands(rng: random.Random, ok: bool) -> tuple[str, str]:
    n = rng.randint(1_000, 9_999_999)
    return f"{n:,}", str(n if ok else n + 1)


def _equation(rng: random.Random, ok: bool) -> tuple[str, str]:
    a = rng.randint(-99, 99)
    return f"x = {a}", str(a if ok else -a - 1)


def _polynomial(rng: random.Random, ok: bool) -> tuple[str, str]:
    a = rng.randint(2, 30)
    return f"(x+{a})^2", f"x^2+{2 * a if ok else a}x+{a * a}"


def _units(rng: random.Random, ok: bool) -> tuple[str, str]:
    a = rng.randint(1, 999)
    return f"{a}\\text{{ cm}}", str(a if ok else a * 10)


_FAMILIES = [
    _fraction,
    _radical,
    _interval,
    _finite_set,
    _degrees,
    _percent,
    _thousands,
    _equation,
    _polynomial,
    _units,
]


def _completion(rng: random.Random, answer: str, boxed: bool = True) -> str:
    steps = " ".join(rng.choice(_STEPS) for _ in range(rng.randint(3, 40)))
    if rng.random() < 0.15:
        steps += " At first I wrote $\\boxed{0}$ but that was a slip."
    final = f"$\\boxed{{{answer}}}$" if boxed else answer
    return f"{steps}\n\nTherefore, the final answer is {final}."


def bench_pairs(n: int, seed: int = 0) -> list[tuple[str, str, bool]]:
    """`n` labelled completions: the hand-written `BENCH_ANSWERS`, then answers generated with
    random numbers from ten families (fractions, radicals, intervals, sets, degrees, percent,
    thousands separators, equations, polynomials, units), half right and half wrong, and one in
    twenty without a box (wrong). Each answer ends reasoning text of random length; distinct
    numbers keep math-verify's own parse cache from flattering the numbers."""
    rng = random.Random(seed)
    pairs = [(_completion(rng, a), r, ok) for a, r, ok in BENCH_ANSWERS[:n]]
    while len(pairs) < n:
        ok = rng.random() < 0.5
        answer, reference = _FAMILIES[len(pairs) % len(_FAMILIES)](rng, ok)
        boxed = rng.random() >= 0.05
        pairs.append((_completion(rng, answer, boxed), reference, ok and boxed))
    return pairs


def _run(verifier: MathVerifier, jobs: list[tuple[str, str, bool]], threads: int, label: str) -> dict:
    with Progress(transient=True) as progress:
        task = progress.add_task(label, total=len(jobs))

        def one(job: tuple[str, str, bool]) -> bool:
            verdict = verifier(job[0], job[1])
            progress.advance(task)
            return verdict.correct == job[2]

        start = time.perf_counter()
        if threads == 1:
            agree = [one(job) for job in jobs]
        else:
            with ThreadPoolExecutor(threads) as pool:
                agree = list(pool.map(one, jobs))
        seconds = time.perf_counter() - start
    wrong = sorted({(jobs[i][0][-60:], jobs[i][1], jobs[i][2]) for i, ok in enumerate(agree) if not ok})
    return {
        "threads": threads,
        "verdicts": len(jobs),
        "seconds": seconds,
        "verdicts_per_s": len(jobs) / seconds,
        "accuracy": sum(agree) / len(jobs),
        "disagreements": [list(w) for w in wrong],
    }


def _run_in_process(jobs: list[tuple[str, str, bool]]) -> dict:
    """The same verdicts by math-verify called directly in this (main) thread, with its own
    `signal.alarm` timeouts: the cost the worker pool adds, and what threads cannot do."""
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    start = time.perf_counter()
    agree = []
    for completion, reference, correct in jobs:
        answer = last_boxed(completion)
        equal = False
        if answer is not None:
            gold = parse(f"\\boxed{{{reference_answer(reference)}}}")
            equal = verify(gold, parse(f"\\boxed{{{answer}}}"))
        agree.append(equal == correct)
    seconds = time.perf_counter() - start
    return {
        "threads": "1, in-process",
        "verdicts": len(jobs),
        "seconds": seconds,
        "verdicts_per_s": len(jobs) / seconds,
        "accuracy": sum(agree) / len(jobs),
        "disagreements": [],
    }


def _hostile(verifier: MathVerifier) -> list[dict]:
    cases = [
        ("1 MB answer", "\\boxed{" + "7" * 1_000_000 + "}", "7"),
        ("10 000 nested braces", "\\boxed{" + "{" * 10_000 + "7" + "}" * 10_000 + "}", "7"),
        ("power tower 9^9^9^9", "\\boxed{9^{9^{9^{9}}}}", "9"),
    ]
    rows = []
    for name, completion, reference in cases:
        start = time.perf_counter()
        verdict = verifier(completion, reference)
        rows.append(
            {
                "input": name,
                "seconds": time.perf_counter() - start,
                "score": verdict.score,
                "feedback": verdict.feedback,
            }
        )
    return rows


def slow_answers(n: int) -> list[str]:
    """`n` distinct power towers of four levels: short and shallow enough to reach a worker, each
    running into any timeout of a few seconds (sympy evaluates them exactly)."""
    bases = [(a, b) for a in range(5, 10) for b in range(5, 10)]
    return [f"{a}^{{{b}^{{{a}^{{{b}}}}}}}" for a, b in bases[:n]]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _latency(values: list[float]) -> dict:
    if not values:
        return {"calls": 0}
    return {
        "calls": len(values),
        "p50": _percentile(values, 0.5),
        "p95": _percentile(values, 0.95),
        "max": max(values),
    }


def mixed_load(
    verifier: MathVerifier, threads: int, normal: int, slow: int, slow_repeats: int, seed: int = 3
) -> dict:
    """Latency of each call when `threads` threads verify `normal` ordinary answers mixed with `slow`
    distinct timeouts, each asked `slow_repeats` times, in a seeded random order."""
    jobs = [(completion, reference, ok, "normal") for completion, reference, ok in bench_pairs(normal, seed)]
    for answer in slow_answers(slow):
        jobs += [(f"So the answer is $\\boxed{{{answer}}}$.", "7", False, "slow")] * slow_repeats
    random.Random(seed).shuffle(jobs)
    latencies: dict[str, list[float]] = {"normal": [], "slow": []}
    wrong = []

    def one(job: tuple[str, str, bool, str]) -> None:
        start = time.perf_counter()
        verdict = verifier(job[0], job[1])
        latencies[job[3]].append(time.perf_counter() - start)
        if verdict.correct != job[2]:
            wrong.append([job[0][-60:], job[1], job[2]])

    with Progress(transient=True) as progress:
        task = progress.add_task(f"mixed load, {threads} threads", total=len(jobs))
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(one, jobs):
                progress.advance(task)
        seconds = time.perf_counter() - start
    return {
        "threads": threads,
        "normal": _latency(latencies["normal"]),
        "slow": _latency(latencies["slow"]),
        "slow_distinct": slow,
        "slow_repeats": slow_repeats,
        "seconds": seconds,
        "disagreements": wrong,
    }


def _print_mixed(console: Console, mixed: dict, timeout: float) -> None:
    table = Table(
        title=f"mixed load: {mixed['threads']} threads, {mixed['slow_distinct']} answers that time out "
        f"(each {mixed['slow_repeats']} times) among {mixed['normal']['calls']} normal ones, timeout "
        f"{timeout:g} s; latency per call"
    )
    for column in ("answers", "calls", "p50 s", "p95 s", "max s"):
        table.add_column(column, justify="right")
    for kind in ("normal", "slow"):
        row = mixed[kind]
        if row["calls"]:
            table.add_row(
                kind, str(row["calls"]), f"{row['p50']:.3f}", f"{row['p95']:.3f}", f"{row['max']:.3f}"
            )
    console.print(table)
    console.print(f"{mixed['seconds']:.1f} s in all; pool {worker_pool_stats()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2o.tasks.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="verdicts per run (default 300)")
    parser.add_argument("--threads", type=int, default=16, help="threads of the second run (default 16)")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="verifier timeout_s (default %(default)s)"
    )
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default min(4, CPUs))")
    parser.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--mixed-only", action="store_true", help="run only the mixed-load latency part")
    parser.add_argument(
        "--normal", type=int, default=240, help="normal answers of the mixed load (default 240)"
    )
    parser.add_argument("--slow", type=int, default=4, help="distinct answers that time out (default 4)")
    parser.add_argument(
        "--slow-repeats", type=int, default=4, help="calls with each answer that times out (default 4)"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.threads < 1 or args.timeout <= 0 or args.normal < 1:
        parser.error("--n, --threads and --normal must be >= 1 and --timeout > 0")
    if not 0 <= args.slow <= len(slow_answers(100)) or args.slow_repeats < 1:
        parser.error(f"--slow must be in [0, {len(slow_answers(100))}] and --slow-repeats >= 1")

    console = Console()
    verifier = MathVerifier(timeout_s=args.timeout, max_workers=args.workers, cache_size=0)
    start = time.perf_counter()
    verifier.warmup()
    startup_s = time.perf_counter() - start
    # The verdict cache on, as in training: a repeated answer may be answered from it.
    loaded = MathVerifier(timeout_s=args.timeout, max_workers=args.workers)
    # A normal answer may wait for at most one timeout, plus a worker start-up.
    bound = args.timeout + max(1.0, startup_s)
    if args.mixed_only:
        mixed = mixed_load(loaded, args.threads, args.normal, args.slow, args.slow_repeats)
        _print_mixed(console, mixed, args.timeout)
        failures = _mixed_failures(mixed, bound)
        for failure in failures:
            console.print(f"[red]failure:[/red] {failure}")
        if args.out:
            args.out.write_text(json.dumps({"mixed_load": mixed}, indent=2) + "\n", encoding="utf-8")
            console.print(f"wrote {args.out}")
        return 1 if failures else 0

    # A fresh set per run, so that no run finds the parses of another in math-verify's cache.
    sets = [bench_pairs(args.n, seed=seed) for seed in range(3)]
    shortcut = sum(
        1
        for completion, reference, _ in sets[0]
        if (answer := last_boxed(completion)) is not None
        and normalize_answer(answer) == normalize_answer(reference_answer(reference))
    )
    runs = [
        _run(verifier, sets[0], 1, "1 thread"),
        _run(verifier, sets[1], args.threads, f"{args.threads} threads"),
    ]
    baseline = _run_in_process(sets[2])
    hostile = _hostile(verifier)
    stats = worker_pool_stats()
    mixed = mixed_load(loaded, args.threads, args.normal, args.slow, args.slow_repeats)

    table = Table(title=f"math verifier: {args.n} verdicts per run, each run on its own distinct pairs")
    for column in ("threads", "seconds", "verdicts/s", "accuracy"):
        table.add_column(column, justify="right")
    for run in [baseline, *runs]:
        table.add_row(
            str(run["threads"]),
            f"{run['seconds']:.2f}",
            f"{run['verdicts_per_s']:.1f}",
            f"{run['accuracy']:.3f}",
        )
    console.print(table)
    console.print(
        f"{stats['size']} worker processes (started in {startup_s:.2f} s); {shortcut} of {args.n} "
        "pairs are settled by exact match without a worker; verdict cache off."
    )
    hostile_table = Table(title=f"hostile input (timeout {args.timeout:g} s)")
    for column in ("input", "seconds", "score", "feedback"):
        hostile_table.add_column(column, overflow="fold")
    for row in hostile:
        hostile_table.add_row(row["input"], f"{row['seconds']:.3f}", f"{row['score']:g}", row["feedback"])
    console.print(hostile_table)
    _print_mixed(console, mixed, args.timeout)

    failures = _mixed_failures(mixed, bound)
    failures += [d for run in runs for d in run["disagreements"]]
    failures += [[row["input"], "score should be 0"] for row in hostile if row["score"] != 0.0]
    failures += [
        [row["input"], f"took {row['seconds']:.2f} s > timeout + 1 s"]
        for row in hostile
        if row["seconds"] > args.timeout + 1.0
    ]
    for failure in failures:
        console.print(f"[red]disagreement:[/red] {failure}")
    if args.out:
        result = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "exact_match_pairs": shortcut,
            "worker_startup_s": startup_s,
            "pool": stats,
            "runs": runs,
            "in_process_baseline": baseline,
            "hostile": hostile,
            "mixed_load": mixed,
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {args.out}")
    return 1 if failures else 0


def _mixed_failures(mixed: dict, bound: float) -> list[list]:
    failures = list(mixed["disagreements"])
    if mixed["normal"]["max"] > bound:
        failures.append(
            [
                f"a normal answer took {mixed['normal']['max']:.2f} s under load > timeout + start-up = {bound:.2f} s"
            ]
        )
    return failures


if __name__ == "__main__":
    sys.exit(main())
