"""Benchmark definitions live in `p2o.tasks.benchmarks` (they are data: a task and its problems);
this name is kept for code that imports them from here."""

from p2o.tasks.benchmarks import (
    DATA_SUFFIXES,
    GROUPS,
    PAPER_BENCHMARKS,
    Benchmark,
    BenchmarkError,
    expand_names,
    list_benchmarks,
    load_benchmark,
)

__all__ = [
    "DATA_SUFFIXES",
    "GROUPS",
    "PAPER_BENCHMARKS",
    "Benchmark",
    "BenchmarkError",
    "expand_names",
    "list_benchmarks",
    "load_benchmark",
]
