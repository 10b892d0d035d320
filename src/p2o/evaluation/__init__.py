"""Evaluation: benchmarks, avg@n / pass@k, reports.

    from p2o.evaluation import evaluate
    report = evaluate("runs/p2o/final", ["toy"], n=1, temperature=0)   # greedy avg@1
    report.accuracy()                                                  # the held-out accuracy

`p2o eval` is the command-line front of `evaluate`; both write the same files with an output folder.
"""

from p2o.evaluation.generation import (
    Generation,
    GenerationError,
    Generator,
    ServerGenerator,
    TransformersGenerator,
    VLLMGenerator,
)
from p2o.evaluation.metrics import avg_at_n, default_ks, mean_pass_at_k, pass_at_k
from p2o.evaluation.runner import BenchmarkResult, EvalReport, evaluate
from p2o.tasks.benchmarks import (
    GROUPS,
    PAPER_BENCHMARKS,
    Benchmark,
    BenchmarkError,
    list_benchmarks,
    load_benchmark,
)

__all__ = [
    "GROUPS",
    "PAPER_BENCHMARKS",
    "Benchmark",
    "BenchmarkError",
    "BenchmarkResult",
    "EvalReport",
    "Generation",
    "GenerationError",
    "Generator",
    "ServerGenerator",
    "TransformersGenerator",
    "VLLMGenerator",
    "avg_at_n",
    "default_ks",
    "evaluate",
    "list_benchmarks",
    "load_benchmark",
    "mean_pass_at_k",
    "pass_at_k",
]
