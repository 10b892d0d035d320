"""Dataset loading: a hub id or a local .json / .jsonl / .parquet file → `Sample`s.

Field names are configurable (DeepScaleR: problem/answer; DeepMath-103K: question/final_answer;
MATH-500: problem/answer) and guessed from common names when not given. Every sample gets a stable
`sample_id`: the id column when one is named, else a hash of the problem text, so ids survive
re-ordering and subsetting.

Bad rows — a line that is not UTF-8 or not a JSON object, a missing or empty problem or answer, a
problem longer than `max_problem_chars` — raise `DataError` naming the file, the line (.jsonl) or
row (1-based, as editors count) and the field; with `skip_bad_rows=True` they are skipped and
counted in the result instead. Rows repeating an earlier row's problem are counted and reported
(`LoadResult.notes`), and dropped with `drop_duplicates=True`. Never silently.
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

from p2o.errors import DataError
from p2o.tasks.base import Sample, Task

PROBLEM_FIELDS = ("problem", "question", "prompt")
ANSWER_FIELDS = ("answer", "final_answer")
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")
# A problem longer than this is almost surely a broken row (a whole document in one field); a
# prompt that long would also exhaust a GPU's memory on the first step. 0 or None: no limit.
DEFAULT_MAX_PROBLEM_CHARS = 20_000


@dataclass
class SkippedRow:
    row: int  # 1-based: the line of a .jsonl file, else the row's position
    field: str  # the field at fault; "" when the row could not be read at all
    reason: str
    where: str = ""  # "line 7" or "row 7"

    def describe(self) -> str:
        return f"{self.where}: " + (f"field {self.field!r} is {self.reason}" if self.field else self.reason)


@dataclass
class LoadResult:
    samples: list[Sample]
    source: str
    problem_field: str
    answer_field: str
    skipped: list[SkippedRow] = field(default_factory=list)
    total_rows: int = 0
    duplicates: int = 0  # rows whose problem repeats an earlier row's
    duplicates_dropped: bool = False
    notes: list[str] = field(default_factory=list)  # warnings beyond summary(), one line each

    def summary(self) -> str:
        s = f"{self.source}: {len(self.samples)} samples from {self.total_rows} rows"
        if self.skipped:
            s += f", {len(self.skipped)} bad rows skipped (first: {self.skipped[0].describe()})"
        if self.duplicates:
            s += f", {self.duplicates} duplicate rows {'dropped' if self.duplicates_dropped else 'kept'}"
        return s


@dataclass
class _Row:
    """One row as read, with where it is; `data` is None when it could not be read (`error` says why)."""

    number: int
    where: str
    data: dict[str, Any] | None
    error: str = ""


# ---------------------------------------------------------------- reading rows


def _undecodable(e: UnicodeDecodeError, data: bytes) -> str:
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    return f"not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column})"


def _iter_json(path: Path) -> Iterator[_Row]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if raw.lstrip()[:1] == b"{" and b"\n" in raw.strip():
            yield from _iter_jsonl(path)  # JSON Lines named .json: a bad line can be skipped
            return
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path} line {line}: {_undecodable(e, raw)}. Re-save the file as UTF-8 (or as JSON Lines, "
            "where --skip_bad_rows can skip such lines)."
        ) from e
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
    for i, row in enumerate(data, start=1):
        if isinstance(row, dict):
            yield _Row(i, f"row {i}", row)
        else:
            yield _Row(i, f"row {i}", None, f"expected a JSON object, got {type(row).__name__}")


def _iter_jsonl(path: Path) -> Iterator[_Row]:
    """Rows of a JSON Lines file, numbered by line (1-based, blank lines counted); a line that is
    not UTF-8, not JSON or not an object comes back with `data` None and the reason."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield _Row(lineno, where, None, _undecodable(e, raw))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield _Row(lineno, where, None, f"invalid JSON ({e.msg} at column {e.colno})")
                continue
            if isinstance(row, dict):
                yield _Row(lineno, where, row)
            else:
                yield _Row(lineno, where, None, f"expected a JSON object, got {type(row).__name__}")


def _iter_parquet(path: Path) -> Iterator[_Row]:
    import pyarrow.parquet as pq

    for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
        yield _Row(i, f"row {i}", row)


def _read_located(
    source: str, split: str = "train", config_name: str | None = None
) -> tuple[list[_Row], str]:
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
    return [_Row(i, f"row {i}", dict(r)) for i, r in enumerate(ds, start=1)], f"{source}[{split}]"


def _unreadable(name: str, row: _Row) -> DataError:
    return DataError(
        f"{name} {row.where}: {row.error}. Fix or remove that line, or pass --skip_bad_rows to skip and "
        "count such rows."
    )


def read_rows(
    source: str, split: str = "train", config_name: str | None = None
) -> tuple[list[dict[str, Any]], str]:
    """All rows of a local file or hub dataset, and a display name for errors. A row that cannot be
    read raises `DataError` naming its line."""
    located, name = _read_located(source, split, config_name)
    for row in located:
        if row.data is None:
            raise _unreadable(name, row)
    return [row.data for row in located if row.data is not None], name


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
    drop_duplicates: bool = False,
    max_problem_chars: int | None = DEFAULT_MAX_PROBLEM_CHARS,
) -> LoadResult:
    """Load `Sample`s from a hub id or a local .json/.jsonl/.parquet file.

    Rows are filtered (`"field>=7"` expressions), checked, then — with `max_samples` — a seeded random
    subset is taken (kept in file order). Errors name the line of a .jsonl file and the row of any
    other source, both 1-based; `meta["row"]` is that number.
    """
    located, name = _read_located(source, split=split, config_name=config_name)
    if not located:
        raise DataError(f"{name}: no rows")
    readable = [r.data for r in located if r.data is not None]
    if not readable and not skip_bad_rows:
        raise _unreadable(name, located[0])
    columns = set().union(*(r.keys() for r in readable[:100]))
    pf = problem_field or _guess(PROBLEM_FIELDS, columns, "problem", name, "problem_field")
    af = answer_field or _guess(ANSWER_FIELDS, columns, "answer", name, "answer_field")
    if id_field and id_field not in columns:
        raise DataError(f"{name}: id column {id_field!r} not found (columns: {', '.join(sorted(columns))})")
    parsed_filters = [parse_filter(f) for f in filters]

    samples: list[Sample] = []
    skipped: list[SkippedRow] = []
    seen: dict[str, int] = {}
    first_of: dict[str, tuple[_Row, str]] = {}  # normalised problem -> its first row and answer
    duplicates: list[tuple[_Row, _Row, bool]] = []  # (row, the earlier row it repeats, same answer?)
    for r in located:
        if r.data is None:
            bad = SkippedRow(r.number, "", r.error, r.where)
            if not skip_bad_rows:
                raise _unreadable(name, r)
            skipped.append(bad)
            continue
        row = r.data
        if parsed_filters and not _passes(row, parsed_filters):
            continue
        bad = None
        for fname in (pf, af):
            if fname not in row:
                bad = SkippedRow(r.number, fname, "missing", r.where)
            elif not _text(row[fname]):
                bad = SkippedRow(r.number, fname, "empty", r.where)
            if bad:
                break
        advice = (
            "Fix the row, map the right column with --problem_field/--answer_field, or pass --skip_bad_rows "
            "to skip and count such rows."
        )
        if not bad and max_problem_chars and len(_text(row[pf])) > max_problem_chars:
            reason = f"{len(_text(row[pf]))} characters long, more than max_problem_chars={max_problem_chars}"
            bad = SkippedRow(r.number, pf, reason, r.where)
            advice = (
                "Shorten or remove the row, raise --max_problem_chars, or pass --skip_bad_rows to skip and "
                "count such rows."
            )
        if bad:
            if not skip_bad_rows:
                raise DataError(f"{name} {bad.describe()}. {advice}")
            skipped.append(bad)
            continue
        problem, answer = _text(row[pf]), _text(row[af])
        key = " ".join(problem.split())
        if key in first_of:
            first, first_answer = first_of[key]
            duplicates.append((r, first, answer == first_answer))
            if drop_duplicates:
                continue
        else:
            first_of[key] = (r, answer)
        if id_field:
            sid = _text(row.get(id_field))
            if not sid:
                raise DataError(f"{name} {r.where}: id field {id_field!r} is missing or empty")
        else:
            sid = stable_id(problem, id_prefix)
        if sid in seen:
            seen[sid] += 1
            sid = f"{sid}-{seen[sid]}"
        else:
            seen[sid] = 1
        meta = {k: v for k, v in row.items() if k not in (pf, af)}
        meta["row"] = r.number
        samples.append(Sample(sample_id=sid, problem=problem, answer=answer, meta=meta))

    if max_samples is not None and max_samples < len(samples):
        keep = sorted(random.Random(seed).sample(range(len(samples)), max_samples))
        samples = [samples[k] for k in keep]
    result = LoadResult(samples, name, pf, af, skipped, total_rows=len(located))
    if duplicates:
        row, first, same = duplicates[0]
        differs = "" if same else " with a different answer"
        result.duplicates = len(duplicates)
        result.duplicates_dropped = drop_duplicates
        result.notes.append(
            f"{name}: {len(duplicates)} rows repeat an earlier row's problem (first: {row.where} repeats "
            f"{first.where}{differs}); "
            + (
                "dropped (--drop_duplicates)."
                if drop_duplicates
                else "kept, so they weigh double; pass --drop_duplicates to drop them."
            )
        )
    return result


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
    for located in _iter_jsonl(path):
        if located.data is None:
            raise DataError(f"{path} {located.where}: {located.error}. Fix or remove that line.")
        row, lineno = located.data, located.number
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
