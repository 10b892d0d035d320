"""Benchmark definitions: a task (prompt + verifier), where its problems come from, how to sample.

A benchmark is a YAML file in `evals/` (`evals/aime24.yaml`):

    name: aime24
    task: math                       # registry name or dotted path; gives the prompt and the verifier
    task_kwargs: {chat_template_kwargs: {enable_thinking: false}}
    dataset: HuggingFaceH4/aime_2024 # hub id or local .json/.jsonl/.parquet; none = the task's own split
    split: train
    problem_field: problem
    answer_field: answer
    local: data/eval/aime24.jsonl    # used instead of `dataset` when the file exists (relative to
                                     # the current directory, the YAML's, or the repository root)
    n: 16                            # completions per problem
    temperature: 0.6                 # 0 = greedy (n is then 1)
    max_tokens: 12288

Names are looked up in $P2O_EVALS_DIR, ./evals and the evals/ shipped with p2o (`p2o.resources`), or
given as a path to a YAML file. Where the problems come from, first match wins: `--data-dir DIR` holding
`DIR/<name>.jsonl` (or .json / .parquet), then `local`, then `dataset` (the hub), then the task's own
generated split (the toy world). Loading goes through `p2o.tasks.data.load_samples`, so field
mapping, stable ids and bad-row errors are the same as for training data.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from p2o.plugins import load_plugins
from p2o.resources import list_names, search_dirs
from p2o.tasks.base import Sample, Task, Verifier
from p2o.tasks.data import DataError, load_samples

# The six benchmarks whose mean the paper reports (Tables 1-2).
PAPER_BENCHMARKS: tuple[str, ...] = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench")
# Names that stand for several benchmarks on the command line; plug-ins add theirs
# (`register_benchmark_group`), `benchmark_groups()` lists them all.
GROUPS: dict[str, tuple[str, ...]] = {
    "paper": PAPER_BENCHMARKS,
}
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


class BenchmarkError(ValueError):
    """A benchmark that cannot be found, parsed or loaded; the message names it and what to do."""


@dataclass
class Benchmark:
    """One benchmark. Build it from YAML with `load_benchmark`, or directly (a `Task` object is fine)."""

    name: str
    task: str | Task = "math"
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    config: str | None = None
    split: str = "test"
    problem_field: str | None = None
    answer_field: str | None = None
    id_field: str | None = None
    # The answer column holds a list (OlympiadBench's final_answer): its items are joined with ", ".
    answer_is_list: bool = False
    local: str | None = None
    # A verifier other than the task's (registry name or dotted path); None = the task's.
    verifier: str | None = None
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 12288
    description: str = ""
    path: Path | None = None  # the YAML file it came from

    def __post_init__(self) -> None:
        where = f"benchmark {self.name!r}" + (f" ({self.path})" if self.path else "")
        if not self.name or not isinstance(self.name, str):
            raise BenchmarkError(f"{where}: 'name' must be a non-empty string")
        if not isinstance(self.n, int) or self.n < 1:
            raise BenchmarkError(f"{where}: 'n' must be an integer >= 1 (got {self.n!r})")
        if not isinstance(self.temperature, int | float) or self.temperature < 0:
            raise BenchmarkError(f"{where}: 'temperature' must be >= 0 (got {self.temperature!r})")
        if not 0 < self.top_p <= 1:
            raise BenchmarkError(f"{where}: 'top_p' must be in (0, 1] (got {self.top_p!r})")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise BenchmarkError(f"{where}: 'max_tokens' must be an integer >= 1 (got {self.max_tokens!r})")
        if not isinstance(self.task_kwargs, dict):
            raise BenchmarkError(f"{where}: 'task_kwargs' must be a mapping (got {self.task_kwargs!r})")

    # ------------------------------------------------------------ the task

    def load_task(self) -> Task:
        """The task object: its prompt builder, verifier (or this benchmark's) and chat-template kwargs."""
        if isinstance(self.task, Task):
            task = self.task
        else:
            from p2o.tasks import get_task

            try:
                task = get_task(self.task, **self.task_kwargs)
            except (ValueError, TypeError) as e:
                raise BenchmarkError(f"benchmark {self.name!r}: cannot build task {self.task!r}: {e}") from e
        if self.verifier:
            from dataclasses import replace

            task = replace(task, verifier=self._verifier())
        return task

    def _verifier(self) -> Verifier:
        from p2o.tasks import get_verifier

        try:
            return get_verifier(self.verifier)  # type: ignore[arg-type]
        except (ValueError, TypeError) as e:
            raise BenchmarkError(
                f"benchmark {self.name!r}: cannot build verifier {self.verifier!r}: {e}"
            ) from e

    # ------------------------------------------------------------ the problems

    def data_source(self, data_dir: str | Path | None = None) -> str | None:
        """Where the problems come from: a local file, a hub id, or None (the task's own split)."""
        if data_dir is not None:
            for suffix in DATA_SUFFIXES:
                p = Path(data_dir).expanduser() / f"{self.name}{suffix}"
                if p.exists():
                    return str(p)
        if self.local:
            local = self._resolve_local()
            if local is not None:
                return str(local)
        return self.dataset

    def _resolve_local(self) -> Path | None:
        p = Path(self.local).expanduser()  # type: ignore[arg-type]
        candidates = [p] if p.is_absolute() else [Path.cwd() / p]
        if not p.is_absolute() and self.path is not None:
            here = self.path.resolve().parent
            candidates += [here / p, here.parent / p]  # beside the YAML; the repository root for evals/
        return next((c for c in candidates if c.exists()), None)

    def load_samples(
        self, task: Task | None = None, *, data_dir: str | Path | None = None, limit: int | None = None
    ) -> tuple[list[Sample], str]:
        """The benchmark's problems (the first `limit` when given) and a display name of their source."""
        source = self.data_source(data_dir)
        if source is None:
            task = task or self.load_task()
            if task.splits is None:
                raise BenchmarkError(
                    f"benchmark {self.name!r}: no dataset, no local file and task {task.name!r} has no "
                    "built-in splits. Set 'dataset' or 'local' in its YAML, or pass --data-dir DIR with "
                    f"DIR/{self.name}.jsonl."
                )
            try:
                samples = list(task.splits(self.split))
            except (KeyError, ValueError) as e:
                raise BenchmarkError(
                    f"benchmark {self.name!r}: task {task.name!r} has no split {self.split!r} ({e})"
                ) from e
            display = f"{task.name}[{self.split}]"
        else:
            is_file = Path(source).suffix.lower() in DATA_SUFFIXES
            try:
                loaded = load_samples(
                    source,
                    split=self.split,
                    config_name=None if is_file else self.config,
                    problem_field=self.problem_field,
                    answer_field=self.answer_field,
                    id_field=self.id_field,
                    id_prefix=f"{self.name}-",
                )
            except DataError as e:
                hint = (
                    f" To run offline, write the problems to DIR/{self.name}.jsonl (one JSON object per line "
                    f"with fields {self.problem_field or 'problem'} and {self.answer_field or 'answer'}) and "
                    "pass --data-dir DIR, or point 'local' in the benchmark's YAML at such a file."
                )
                raise BenchmarkError(f"benchmark {self.name!r}: {e}{'' if is_file else hint}") from e
            samples = loaded.samples
            display = loaded.source
        if self.answer_is_list:
            samples = [_join_list_answer(s, self.name) for s in samples]
        if limit is not None:
            samples = samples[:limit]
        if not samples:
            raise BenchmarkError(f"benchmark {self.name!r}: {display} holds no problems")
        return samples, display

    def settings(self) -> dict[str, Any]:
        return {
            "task": self.task if isinstance(self.task, str) else self.task.name,
            "dataset": self.dataset,
            "split": self.split,
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }


def _join_list_answer(sample: Sample, bench: str) -> Sample:
    text = sample.answer.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError) as e:
            raise BenchmarkError(
                f"benchmark {bench!r} sample {sample.sample_id}: answer {text[:80]!r} is not a list literal "
                "although the benchmark sets answer_is_list"
            ) from e
        if isinstance(items, list | tuple):
            sample = Sample(sample.sample_id, sample.problem, ", ".join(str(x) for x in items), sample.meta)
    return sample


# ---------------------------------------------------------------- reading YAML


_FIELDS = {f.name for f in fields(Benchmark)} - {"path"}


def load_benchmark(name_or_path: str | Path) -> Benchmark:
    """A benchmark by name (`aime24`, looked up in `search_dirs("evals")`) or by the path of its YAML file."""
    path = _find(str(name_or_path))
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise BenchmarkError(f"{path}: invalid YAML ({e})") from e
    if not isinstance(data, dict):
        raise BenchmarkError(f"{path}: expected a mapping of benchmark fields, got {type(data).__name__}")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise BenchmarkError(
            f"{path}: unknown field(s) {', '.join(unknown)}. Known fields: {', '.join(sorted(_FIELDS))}"
        )
    data.setdefault("name", path.stem)
    data["task_kwargs"] = data.get("task_kwargs") or {}
    try:
        return Benchmark(**data, path=path)
    except TypeError as e:
        raise BenchmarkError(f"{path}: {e}") from e


def _find(name: str) -> Path:
    p = Path(name).expanduser()
    if p.suffix.lower() in (".yaml", ".yml"):
        if not p.exists():
            raise BenchmarkError(f"benchmark file {p} does not exist")
        return p
    for d in search_dirs("evals"):
        for suffix in (".yaml", ".yml"):
            candidate = d / f"{name}{suffix}"
            if candidate.exists():
                return candidate
    known = ", ".join(list_benchmarks()) or "(none)"
    raise BenchmarkError(
        f"unknown benchmark {name!r}. Known: {known}; groups: {', '.join(benchmark_groups())}; or give the path of a "
        "benchmark YAML file."
    )


def list_benchmarks() -> list[str]:
    """Names of the benchmark files found in `search_dirs("evals")`."""
    return list_names("evals", (".yaml", ".yml"))


def register_benchmark_group(name: str, members: tuple[str, ...] | list[str]) -> None:
    """Let `name` stand for the benchmarks `members` on the command line (`--benchmarks name`)."""
    GROUPS[name] = tuple(members)


def benchmark_groups() -> dict[str, tuple[str, ...]]:
    """Every group name -> its benchmarks, the plug-ins' included."""
    load_plugins()
    return dict(GROUPS)


def expand_names(spec: str | list[str]) -> list[str]:
    """`"paper,toy"` or a list → benchmark names/paths with groups expanded, duplicates dropped."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    groups = benchmark_groups()
    out: list[str] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        for name in groups.get(item, (item,)):
            if name not in out:
                out.append(name)
    return out
