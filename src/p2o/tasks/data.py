"""Dataset loading: a hub id or a local .json / .jsonl / .parquet file → `Sample`s.

Field names are configurable (DeepScaleR: problem/answer; DeepMath-103K: question/final_answer;
MATH-500: problem/answer) and guessed from common names when not given. Every sample gets a stable
`sample_id`: the id column when one is named, else a hash of the problem text, so ids survive
re-ordering and subsetting. A row with a missing or empty problem or answer raises `DataError`
naming the file, row and field — or, with `skip_bad_rows=True`, is skipped and counted in the
result. Never silently.
"""

from __future__ import annotations

import hashlib
import json
import operator
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2o.tasks.base import Sample, Task

PROBLEM_FIELDS = ("problem", "question", "prompt")
ANSWER_FIELDS = ("answer", "final_answer")
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")


class DataError(ValueError):
    """A dataset problem; the message names the source, row and field, and what to do."""


@dataclass
class SkippedRow:
    row: int
    field: str
    reason: str


@dataclass
class LoadResult:
    samples: list[Sample]
    source: str
    problem_field: str
    answer_field: str
    skipped: list[SkippedRow] = field(default_factory=list)
    total_rows: int = 0

    def summary(self) -> str:
        s = f"{self.source}: {len(self.samples)} samples from {self.total_rows} rows"
        if self.skipped:
            s += f", {len(self.skipped)} bad rows skipped"
        return s


# ---------------------------------------------------------------- reading rows


def _iter_json(path: Path) -> Iterator[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        # Many ".json" files are JSON Lines in disguise.
        yield from _iter_jsonl(path)
        return
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if "data" in data and isinstance(data["data"], list):
            data = data["data"]
        elif len(lists) == 1:
            data = lists[0]
        else:
            raise DataError(f"{path}: expected a JSON list of objects (or {{'data': [...]}}), got an object")
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {i}: expected an object, got {type(row).__name__}")
        yield row


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path} line {lineno}: invalid JSON ({e.msg}). Fix or remove that line."
                ) from e
            if not isinstance(row, dict):
                raise DataError(f"{path} line {lineno}: expected a JSON object, got {type(row).__name__}")
            yield row


def _iter_parquet(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    yield from pq.read_table(path).to_pylist()


def read_rows(
    source: str, split: str = "train", config_name: str | None = None
) -> tuple[list[dict[str, Any]], str]:
    """All rows of a local file or hub dataset, and a display name for errors."""
    path = Path(source).expanduser()
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        if not path.exists():
            raise DataError(f"dataset file {path} does not exist")
        suffix = path.suffix.lower()
        reader = {".json": _iter_json, ".jsonl": _iter_jsonl, ".parquet": _iter_parquet}.get(suffix)
        if reader is None:
            raise DataError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl or .parquet")
        return list(reader(path)), str(path)
    import datasets

    try:
        ds = datasets.load_dataset(source, config_name, split=split)
    except Exception as e:  # network, auth, unknown id: keep the cause, say what was asked
        raise DataError(
            f"could not load hub dataset {source!r} (config={config_name!r}, split={split!r}): {e}. "
            "Offline? Pass a local .json/.jsonl/.parquet file instead."
        ) from e
    return [dict(r) for r in ds], f"{source}[{split}]"


# ---------------------------------------------------------------- filters

_OPS = {
    ">=": operator.ge,
    "<=": operator.le,
    "!=": operator.ne,
    "==": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
}
_FILTER_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|!=|==|>|<)\s*(.+?)\s*$")


def parse_filter(expr: str) -> tuple[str, str, Any]:
    """`"difficulty>=7"` → ("difficulty", ">=", 7.0). Values are numbers when they parse as such."""
    m = _FILTER_RE.match(expr)
    if not m:
        raise DataError(f"bad filter {expr!r}: expected 'field OP value' with OP one of {', '.join(_OPS)}")
    name, op, raw = m.groups()
    raw = raw.strip("'\"")
    value: Any
    try:
        value = float(raw)
    except ValueError:
        value = raw
    return name, op, value


def _passes(row: dict[str, Any], filters: list[tuple[str, str, Any]]) -> bool:
    for name, op, value in filters:
        if name not in row:
            return False
        got = row[name]
        if isinstance(value, float):
            try:
                got = float(got)
            except (TypeError, ValueError):
                return False
        else:
            got = str(got)
        if not _OPS[op](got, value):
            return False
    return True


# ---------------------------------------------------------------- samples


def _guess(fields: Iterable[str], columns: set[str], what: str, source: str, flag: str) -> str:
    for f in fields:
        if f in columns:
            return f
    raise DataError(
        f"{source}: no {what} column found (looked for {', '.join(fields)}; columns are "
        f"{', '.join(sorted(columns)) or 'none'}). Name it with --{flag}."
    )


def stable_id(problem: str, prefix: str = "") -> str:
    digest = hashlib.sha1(" ".join(problem.split()).encode("utf-8")).hexdigest()[:12]
    return f"{prefix}{digest}"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def load_samples(
    source: str,
    *,
    split: str = "train",
    config_name: str | None = None,
    problem_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
    filters: Iterable[str] = (),
    max_samples: int | None = None,
    seed: int = 42,
    skip_bad_rows: bool = False,
    id_prefix: str = "",
) -> LoadResult:
    """Load `Sample`s from a hub id or a local .json/.jsonl/.parquet file.

    Rows are filtered (`"field>=7"` expressions), checked, then — with `max_samples` — a seeded random
    subset is taken (kept in file order). Row numbers in errors are 0-based positions in the source
    (for .jsonl, the error from reading names the line).
    """
    rows, name = read_rows(source, split=split, config_name=config_name)
    if not rows:
        raise DataError(f"{name}: no rows")
    columns = set().union(*(r.keys() for r in rows[:100]))
    pf = problem_field or _guess(PROBLEM_FIELDS, columns, "problem", name, "problem_field")
    af = answer_field or _guess(ANSWER_FIELDS, columns, "answer", name, "answer_field")
    if id_field and id_field not in columns:
        raise DataError(f"{name}: id column {id_field!r} not found (columns: {', '.join(sorted(columns))})")
    parsed_filters = [parse_filter(f) for f in filters]

    samples: list[Sample] = []
    skipped: list[SkippedRow] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if parsed_filters and not _passes(row, parsed_filters):
            continue
        bad = None
        for fname in (pf, af):
            if fname not in row:
                bad = SkippedRow(i, fname, "missing")
            elif not _text(row[fname]):
                bad = SkippedRow(i, fname, "empty")
            if bad:
                break
        if bad:
            if not skip_bad_rows:
                raise DataError(
                    f"{name} row {bad.row}: field {bad.field!r} is {bad.reason}. Fix the row, map the right "
                    "column with --problem_field/--answer_field, or pass --skip_bad_rows to skip and count such rows."
                )
            skipped.append(bad)
            continue
        problem, answer = _text(row[pf]), _text(row[af])
        if id_field:
            sid = _text(row.get(id_field))
            if not sid:
                raise DataError(f"{name} row {i}: id field {id_field!r} is missing or empty")
        else:
            sid = stable_id(problem, id_prefix)
        if sid in seen:
            seen[sid] += 1
            sid = f"{sid}-{seen[sid]}"
        else:
            seen[sid] = 1
        meta = {k: v for k, v in row.items() if k not in (pf, af)}
        meta["row"] = i
        samples.append(Sample(sample_id=sid, problem=problem, answer=answer, meta=meta))

    if max_samples is not None and max_samples < len(samples):
        keep = sorted(random.Random(seed).sample(range(len(samples)), max_samples))
        samples = [samples[k] for k in keep]
    return LoadResult(samples, name, pf, af, skipped, total_rows=len(rows))


def task_samples(
    task: Task,
    dataset: str | None = None,
    *,
    split: str = "train",
    **kwargs: Any,
) -> LoadResult:
    """Samples for a task: from `dataset` when given (the task's field defaults apply), else the task's
    own generated split."""
    if dataset:
        opts = {**task.dataset, **{k: v for k, v in kwargs.items() if v is not None}}
        opts.pop("source", None)
        return load_samples(dataset, split=opts.pop("split", split), **opts)
    if task.dataset.get("source"):
        opts = {**task.dataset, **{k: v for k, v in kwargs.items() if v is not None}}
        source = opts.pop("source")
        return load_samples(source, split=opts.pop("split", split), **opts)
    if task.splits is None:
        raise DataError(f"task {task.name!r} has no built-in data: pass --dataset (a hub id or a local file)")
    samples = task.splits(split)
    max_samples = kwargs.get("max_samples")
    if max_samples is not None and max_samples < len(samples):
        keep = sorted(random.Random(kwargs.get("seed", 42)).sample(range(len(samples)), max_samples))
        samples = [samples[k] for k in keep]
    return LoadResult(samples, f"{task.name}[{split}]", "problem", "answer", total_rows=len(samples))


def to_dataset(task: Task, samples: list[Sample]):
    """A `datasets.Dataset` for TRL: `prompt` (chat messages of x), `sample_id`, `problem`, `answer`."""
    import datasets

    return datasets.Dataset.from_dict(
        {
            "prompt": [task.build_messages(s.problem) for s in samples],
            "sample_id": [s.sample_id for s in samples],
            "problem": [s.problem for s in samples],
            "answer": [s.answer for s in samples],
        }
    )


def read_hard_samples(path: str | Path, known: dict[str, Sample] | None = None) -> list[Sample]:
    """Hard samples from a JSONL file: each line has `sample_id` and, unless `known` has that id,
    `problem` and `answer`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"hard-sample file {path} does not exist")
    out: list[Sample] = []
    for lineno, row in enumerate(_iter_jsonl(path), start=1):
        sid = _text(row.get("sample_id"))
        if not sid:
            raise DataError(f"{path} line {lineno}: field 'sample_id' is missing or empty")
        if known is not None and sid in known:
            out.append(known[sid])
            continue
        problem, answer = _text(row.get("problem")), _text(row.get("answer"))
        for fname, val in (("problem", problem), ("answer", answer)):
            if not val:
                raise DataError(
                    f"{path} line {lineno}: field {fname!r} is missing or empty and sample {sid!r} "
                    "is not in the task's dataset"
                )
        out.append(
            Sample(
                sid,
                problem,
                answer,
                {k: v for k, v in row.items() if k not in ("sample_id", "problem", "answer")},
            )
        )
    return out
