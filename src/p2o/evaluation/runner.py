"""`evaluate(models, benchmarks, ...)`: generate, score with each benchmark's verifier, report.

For every model and benchmark: the benchmark's problems are turned into chat prompts by its task
(x), rendered with the one renderer T(x, z) when a template is measured, generated `n` times (greedy
when the temperature is 0; against a server, a templated completion is a DSPy call of the template
program, as in a GEPA phase), and every completion is scored by the task's verifier in a thread pool.
Reported: avg@n (mean accuracy over all completions; greedy avg@1 is plain accuracy) and unbiased
pass@k, per benchmark, and the mean over the paper's six benchmarks.

One benchmark that cannot be loaded, or one model that cannot be loaded, is reported by name in the
results and in `summary.json`; the others still run. With `output_dir`, each (model, benchmark)
writes `<model>/<bench>.jsonl` as soon as it is done and the summary is rewritten after each, so an
interrupted run keeps what it finished.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2o.devices import cuda_available
from p2o.evaluation.generation import (
    GenerationError,
    Generator,
    ServerGenerator,
    TransformersGenerator,
    VLLMGenerator,
    vllm_available,
)
from p2o.evaluation.metrics import avg_at_n, mean_pass_at_k, parse_ks
from p2o.files import write_jsonl_atomic
from p2o.policy.pool import thread_map
from p2o.tasks.base import Sample, Task, Verdict
from p2o.tasks.benchmarks import (
    PAPER_BENCHMARKS,
    Benchmark,
    BenchmarkError,
    expand_names,
    load_benchmark,
)

if TYPE_CHECKING:
    from p2o.templates.programs import TemplateProgram

BACKENDS = ("auto", "vllm", "transformers")


@dataclass
class BenchmarkResult:
    """One model on one benchmark. `error` is set (and the metrics are None) when it could not run."""

    model: str
    benchmark: str
    n: int = 0
    temperature: float = 0.0
    num_problems: int = 0
    avg: float | None = None  # avg@n
    pass_at_k: dict[str, float] = field(default_factory=dict)
    truncated_frac: float | None = None
    mean_completion_tokens: float | None = None
    source: str = ""
    seconds: float = 0.0
    error: str | None = None
    correct: list[int] = field(default_factory=list, repr=False)  # per problem, out of n
    # avg@n per sample group, where the task labels its samples (`Task.group_of`): e.g. per operator
    groups: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def metric(self) -> str:
        return f"avg@{self.n}" if self.n else "avg@n"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("correct")
        d["metric"] = self.metric
        return d


@dataclass
class EvalReport:
    """All results: `results[model][benchmark]`, in run order."""

    models: list[str]
    benchmarks: list[str]
    results: dict[str, dict[str, BenchmarkResult]]
    settings: dict[str, Any] = field(default_factory=dict)
    output_dir: Path | None = None

    def result(self, model: str, benchmark: str) -> BenchmarkResult:
        return self.results[model][benchmark]

    def accuracy(self, model: str | None = None, benchmark: str | None = None) -> float:
        """avg@n of one (model, benchmark); either may be left out when there is only one."""
        model = model or _only(self.models, "model")
        benchmark = benchmark or _only(self.benchmarks, "benchmark")
        r = self.result(model, benchmark)
        if r.avg is None:
            raise RuntimeError(f"{model} on {benchmark} did not run: {r.error}")
        return r.avg

    def average(self, model: str) -> dict[str, Any]:
        """The mean avg@n over the paper's six benchmarks (None unless all six ran) and over all that ran."""
        rows = self.results.get(model, {})
        done = {b: r.avg for b, r in rows.items() if r.avg is not None}
        paper = [done[b] for b in PAPER_BENCHMARKS if b in done]
        return {
            "paper_avg": sum(paper) / len(paper) if len(paper) == len(PAPER_BENCHMARKS) else None,
            "mean": sum(done.values()) / len(done) if done else None,
            "benchmarks": len(done),
        }

    @property
    def errors(self) -> list[str]:
        return [
            f"{m} / {b}: {r.error}" for m, rows in self.results.items() for b, r in rows.items() if r.error
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": self.models,
            "benchmarks": self.benchmarks,
            "settings": self.settings,
            "results": {m: {b: r.to_dict() for b, r in rows.items()} for m, rows in self.results.items()},
            "averages": {m: self.average(m) for m in self.models},
            "errors": self.errors,
        }


def _only(items: list[str], what: str) -> str:
    if len(items) != 1:
        raise ValueError(f"name the {what}: this report has {len(items)} ({', '.join(items)})")
    return items[0]


# ---------------------------------------------------------------- models


def model_labels(specs: Sequence[str]) -> list[tuple[str, str]]:
    """(label, path-or-id) per `--model` value. `NAME=PATH` names it; else the directory's name,
    with its parent's added when two models would share a label (`p2o-final`, `grpo-final`)."""
    pairs: list[tuple[str | None, str]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        pairs.append((name, path) if sep and name and "/" not in name else (None, spec))
    labels = [name or _slug(Path(path).name or path) for name, path in pairs]
    shared = {label for label in labels if labels.count(label) > 1}
    for i, (name, path) in enumerate(pairs):
        if name is None and labels[i] in shared:
            parts = Path(path).parts
            labels[i] = _slug("-".join(parts[-2:])) if len(parts) > 1 else labels[i]
    seen: dict[str, int] = {}
    out = []
    for label, (_, path) in zip(labels, pairs, strict=True):
        seen[label] = seen.get(label, 0) + 1
        out.append((label if seen[label] == 1 else f"{label}-{seen[label]}", path))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def open_generator(
    path: str,
    label: str,
    *,
    backend: str = "auto",
    server: str | None = None,
    api_key: str | None = None,
    seed: int = 0,
    batch_size: int = 32,
    num_threads: int = 16,
    vllm_kwargs: dict[str, Any] | None = None,
) -> Generator:
    """The generator for one model: a server client, the vLLM engine or transformers in-process."""
    if backend not in BACKENDS:
        raise GenerationError(f"--backend: must be one of {', '.join(BACKENDS)} (got {backend!r})")
    if server:
        kind = "transformers" if backend == "transformers" else "vllm"
        return ServerGenerator(server, path, label=label, kind=kind, api_key=api_key, num_threads=num_threads)
    if backend == "vllm" or (backend == "auto" and vllm_available() and cuda_available()):
        return VLLMGenerator(path, label=label, seed=seed, **(vllm_kwargs or {}))
    return TransformersGenerator.from_pretrained(path, label=label, batch_size=batch_size)


# ---------------------------------------------------------------- evaluate


@dataclass
class _Loaded:
    bench: Benchmark
    task: Task | None = None
    samples: list[Sample] = field(default_factory=list)
    source: str = ""
    error: str | None = None


@dataclass
class _TemplateCall:
    """What a templated evaluation runs: a template program's predictor with this instruction."""

    program: TemplateProgram
    instruction: str


def _template_call(program: Any, template: str | None) -> _TemplateCall | None:
    from p2o.templates.programs import TemplateProgram, load_program, text_program

    if program is None:
        return None if template is None else _TemplateCall(text_program(template), template)
    if isinstance(program, str | Path):
        program = load_program(str(program))
    if not isinstance(program, TemplateProgram):
        raise ValueError(
            f"evaluate: program must be a TemplateProgram or a program name, got {type(program).__name__}"
        )
    return _TemplateCall(program, program.seed if template is None else template)


def evaluate(
    models: str | Path | Generator | Sequence[str | Path | Generator],
    benchmarks: str | Benchmark | Sequence[str | Benchmark],
    *,
    n: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    template: str | None = None,
    program: Any = None,
    backend: str = "auto",
    server: str | None = None,
    api_key: str | None = None,
    output_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    pass_k: str | Sequence[int] | None = None,
    batch_size: int = 32,
    num_threads: int = 16,
    chat_template_kwargs: dict[str, Any] | None = None,
    task_kwargs: dict[str, Any] | None = None,
    vllm_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> EvalReport:
    """Evaluate models on benchmarks; returns an `EvalReport` (and writes files with `output_dir`).

    models: checkpoint directories or hub ids (`NAME=PATH` to name one), or ready `Generator`s (e.g.
        `TransformersGenerator(model, tokenizer, label="p2o")` for a model already in memory).
    benchmarks: names (`aime24`, `toy`, groups `paper`, `toy_all`), YAML paths, or `Benchmark`s.
    n / temperature / top_p / max_tokens: override every benchmark's own setting. Temperature 0 is
        greedy decoding, and then n is 1.
    template: a template text z; prompts become T(x, z) (the one renderer), measuring a prompt's
        effect without training.
    program: a template program (`TemplateProgram`, a program name such as `math_cot@stepwise`, or
        an evolved program file's `evolved_program(path)`) whose predictor runs the template: with
        `template`, the text is its instruction (its demos kept), else its seed instruction is
        measured. Without it, a template text runs as `text_program` (no demos: x̃ = T(x, z)).
        Against a server, each templated completion is a DSPy call of the program's predictor
        through `TemplateAdapter` to the policy client's `dspy.LM` (never cached), as in a GEPA
        phase; in-process backends (transformers, vLLM offline) generate from the messages that
        adapter's `format` renders, the same bytes, without a DSPy LM call.
    backend: 'auto' (vLLM offline engine when installed and a GPU is present, else transformers),
        'vllm' or 'transformers'. `server`: the URL of an OpenAI-compatible server instead, with
        `models` naming the served model(s).
    data_dir: a folder of local benchmark files `<name>.jsonl` that win over hub ids.
    limit: evaluate only the first `limit` problems of each benchmark (smoke runs).
    pass_k: the k of pass@k ("1,4,16"); default powers of two up to n, and n.
    task_kwargs: merged into every benchmark's task options (`{"seed": 1}`: the toy world of seed 1).
    """
    model_list = list(models) if isinstance(models, list | tuple) else [models]
    bench_list = _bench_specs(benchmarks)
    if not model_list:
        raise ValueError("evaluate: no model given")
    if not bench_list:
        raise ValueError("evaluate: no benchmark given")
    if template is not None and not template.strip():
        template = None
    call = _template_call(program, template)
    if call is not None:
        template = call.program.template(call.instruction) or None

    loaded = [_load(spec, data_dir, limit, task_kwargs) for spec in bench_list]
    plan = _label_models(model_list)
    labels = [label for label, _ in plan]
    out_dir = Path(output_dir) if output_dir is not None else None
    settings = {
        "backend": "server" if server else backend,
        "server": server,
        "template": template,
        "task_kwargs": task_kwargs,
        "seed": seed,
        "limit": limit,
        "overrides": {"n": n, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens},
        "models": {label: (m if isinstance(m, str) else getattr(m, "label", "")) for label, m in plan},
        "benchmarks": {lb.bench.name: {**lb.bench.settings(), "source": lb.source} for lb in loaded},
    }
    report = EvalReport(
        labels, [lb.bench.name for lb in loaded], {label: {} for label in labels}, settings, out_dir
    )

    open_kwargs = {
        "backend": backend,
        "server": server,
        "api_key": api_key,
        "seed": seed,
        "batch_size": batch_size,
        "num_threads": num_threads,
        "vllm_kwargs": vllm_kwargs,
    }
    run_kwargs = {
        "n": n,
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
        "call": call,
        "seed": seed,
        "pass_k": pass_k,
        "num_threads": num_threads,
        "chat_template_kwargs": chat_template_kwargs,
    }
    with _progress_bar(progress) as bar:
        for label, model in plan:
            _evaluate_model(report, label, model, loaded, bar, open_kwargs, run_kwargs)
    if out_dir is not None:
        from p2o.evaluation.report import write_report

        write_report(report, out_dir, final=True)
    return report


def _label_models(model_list: list[Any]) -> list[tuple[str, str | Generator]]:
    """(label, model) per model: a ready generator keeps its label, a path or id gets `model_labels`'."""
    specs = [m for m in model_list if not hasattr(m, "generate")]
    labelled = iter(model_labels([str(m) for m in specs]))
    return [(m.label, m) if hasattr(m, "generate") else next(labelled) for m in model_list]


def _open_model(
    model: str | Generator, label: str, open_kwargs: dict[str, Any]
) -> tuple[Generator | None, str | None]:
    """(generator, None), or (None, why) for a model that cannot be loaded."""
    if not isinstance(model, str):
        return model, None
    try:
        return open_generator(model, label, **open_kwargs), None
    except (GenerationError, ImportError, OSError, ValueError) as e:
        return None, f"model could not be loaded: {e}"


def _evaluate_model(
    report: EvalReport,
    label: str,
    model: str | Generator,
    loaded: list[_Loaded],
    bar: Any,
    open_kwargs: dict[str, Any],
    run_kwargs: dict[str, Any],
) -> None:
    """One model on every benchmark into `report`; with an output folder, each benchmark's rows and
    the summary are written as soon as it is done. A generator opened here is closed after."""
    from p2o.evaluation.report import write_report

    out_dir = report.output_dir
    generator, model_error = _open_model(model, label, open_kwargs)
    for lb in loaded:
        if lb.error or model_error:
            report.results[label][lb.bench.name] = BenchmarkResult(
                label, lb.bench.name, error=lb.error or model_error, source=lb.source
            )
            continue
        assert generator is not None and lb.task is not None
        result, rows = _run_one(generator, label, lb, bar=bar, **run_kwargs)
        report.results[label][lb.bench.name] = result
        if out_dir is not None and rows:
            _write_jsonl(out_dir / label / f"{lb.bench.name}.jsonl", rows)
        if out_dir is not None:
            write_report(report, out_dir, final=False)
    if generator is not None and isinstance(model, str):
        generator.close()


def _bench_specs(benchmarks: Any) -> list[str | Benchmark]:
    if isinstance(benchmarks, Benchmark):
        return [benchmarks]
    if isinstance(benchmarks, str):
        return list(expand_names(benchmarks))
    out: list[str | Benchmark] = []
    for b in benchmarks:
        out.extend([b] if isinstance(b, Benchmark) else expand_names(str(b)))
    return out


def _load(
    spec: str | Benchmark, data_dir: str | Path | None, limit: int | None, task_kwargs: dict[str, Any] | None
) -> _Loaded:
    if isinstance(spec, Benchmark):
        bench = spec
    else:
        try:
            bench = load_benchmark(spec)
        except BenchmarkError as e:
            return _Loaded(Benchmark(name=Path(str(spec)).stem or str(spec)), error=str(e))
    if task_kwargs and isinstance(bench.task, str):
        bench = dataclasses.replace(bench, task_kwargs={**bench.task_kwargs, **task_kwargs})
    try:
        task = bench.load_task()
        samples, source = bench.load_samples(task, data_dir=data_dir, limit=limit)
    except (BenchmarkError, ImportError) as e:
        return _Loaded(bench, error=str(e), source=bench.data_source(data_dir) or "")
    return _Loaded(bench, task, samples, source)


def _run_one(
    generator: Generator,
    label: str,
    lb: _Loaded,
    *,
    n: int | None,
    temperature: float | None,
    top_p: float | None,
    max_tokens: int | None,
    call: _TemplateCall | None,
    seed: int,
    pass_k: Any,
    num_threads: int,
    chat_template_kwargs: dict[str, Any] | None,
    bar: Any,
) -> tuple[BenchmarkResult, list[dict[str, Any]]]:
    bench, task, samples = lb.bench, lb.task, lb.samples
    assert task is not None
    temp = bench.temperature if temperature is None else float(temperature)
    k_n = (bench.n if n is None else int(n)) if temp > 0 else 1
    result = BenchmarkResult(label, bench.name, n=k_n, temperature=temp, source=lb.source)
    t0 = time.perf_counter()
    try:
        sampling: dict[str, Any] = {
            "n": k_n,
            "temperature": temp,
            "top_p": bench.top_p if top_p is None else float(top_p),
            "max_tokens": bench.max_tokens if max_tokens is None else int(max_tokens),
            "seed": seed,
            "chat_template_kwargs": {**(task.chat_template_kwargs or {}), **(chat_template_kwargs or {})},
        }
        gen_task = bar.add_task(f"{label} · {bench.name} · generate", total=len(samples) * k_n)

        def tick(k: int) -> None:
            bar.advance(gen_task, k)

        if call is None:
            prompts = [task.build_messages(s.problem) for s in samples]
            gens = generator.generate(prompts, progress=tick, **sampling)
        else:
            from p2o.templates.programs import TemplateAdapter

            adapter = TemplateAdapter(task.build_messages)
            prompts = [call.program.render(task.build_messages, s.problem, call.instruction) for s in samples]
            if hasattr(generator, "generate_program"):  # a served policy: DSPy calls of the program
                gens = generator.generate_program(
                    call.program.predictor_with(call.instruction),
                    [call.program.inputs(s.problem) for s in samples],
                    adapter=adapter,
                    output_field=call.program.output_field,
                    progress=tick,
                    **sampling,
                )
            else:  # in process: the adapter's rendering, generated without an LM call
                gens = generator.generate(prompts, progress=tick, **sampling)
        bar.update(gen_task, completed=len(samples) * k_n)
        score_task = bar.add_task(f"{label} · {bench.name} · score", total=len(samples) * k_n)
        verdicts = _score(task, samples, gens, num_threads, lambda: bar.advance(score_task, 1))
    except Exception as e:  # one benchmark's failure must not stop the others: report it by name
        result.error = f"{type(e).__name__}: {e}"
        result.seconds = round(time.perf_counter() - t0, 2)
        return result, []

    correct = [sum(v.correct for v in vs) for vs in verdicts]
    flat = [g for gs in gens for g in gs]
    result.num_problems = len(samples)
    result.correct = correct
    result.avg = avg_at_n(correct, k_n)
    result.groups = group_accuracy(task, samples, correct, k_n)
    result.pass_at_k = {f"pass@{k}": mean_pass_at_k(correct, k_n, k) for k in parse_ks(pass_k, k_n)}
    result.truncated_frac = sum(g.finish_reason == "length" for g in flat) / max(1, len(flat))
    result.mean_completion_tokens = sum(g.tokens for g in flat) / max(1, len(flat))
    result.seconds = round(time.perf_counter() - t0, 2)
    rows = [
        {
            "sample_id": s.sample_id,
            "problem": s.problem,
            "answer": s.answer,
            "prompt": p,
            "completions": [g.text for g in gs],
            "finish_reasons": [g.finish_reason for g in gs],
            "scores": [v.score for v in vs],
            "extracted": [v.extracted for v in vs],
            "feedback": [v.feedback for v in vs],
            "correct": c,
            "n": k_n,
        }
        for s, p, gs, vs, c in zip(samples, prompts, gens, verdicts, correct, strict=True)
    ]
    return result, rows


def group_accuracy(task: Task, samples: list[Sample], correct: list[int], n: int) -> dict[str, float]:
    """avg@n per `task.group_of` label, labels sorted; {} when the task does not group its samples."""
    if task.group_of is None:
        return {}
    by: dict[str, list[int]] = {}
    for s, c in zip(samples, correct, strict=True):
        by.setdefault(str(task.group_of(s)), []).append(c)
    return {g: avg_at_n(by[g], n) for g in sorted(by)}


def _score(
    task: Task, samples: list[Sample], gens: list[list[Any]], num_threads: int, tick: Any
) -> list[list[Verdict]]:
    if len(gens) != len(samples):
        raise GenerationError(f"the backend returned {len(gens)} prompts' completions for {len(samples)}")

    def failed(job: tuple[str, str], e: Exception) -> Verdict:  # a verifier must not raise: score 0, say why
        return Verdict(0.0, f"The verifier raised {type(e).__name__}: {e}")

    jobs = [(g.text, s.answer) for s, gs in zip(samples, gens, strict=True) for g in gs]
    rows = thread_map(
        lambda job: task.verifier(*job),
        jobs,
        threads=num_threads,
        on_error=failed,
        on_item=lambda i, _: tick(),
    )
    flat = [v for (v,) in rows]
    out, i = [], 0
    for gs in gens:
        out.append(flat[i : i + len(gs)])
        i += len(gs)
    return out


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_jsonl_atomic(path, rows)


class _NoBar:
    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def advance(self, *a: Any, **k: Any) -> None:
        pass

    def update(self, *a: Any, **k: Any) -> None:
        pass


class _progress_bar:
    """A rich progress bar on stderr (or nothing), usable as a context manager."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return _NoBar()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._bar.__enter__()
        return self._bar

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
