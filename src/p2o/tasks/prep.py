"""`p2o data deepscaler | deepmath | eval`: the paper's training subsets and held-out rows, as JSONL.

The splits are those of the authors' release (scripts/data_process/*.py), computed with the same
`datasets` operations on the same seed, so the same source gives the same rows:

- **deepscaler** (agentica-org/DeepScaleR-Preview-Dataset, problem/answer): shuffle with seed 42,
  hold out 500 rows (`train_test_split(test_size=500, seed=42)`), then the 5K and 10K training
  subsets (`train_test_split(test_size=size, seed=42)["test"]` of the rest; 5K ⊂ 10K).
- **deepmath** (zwhe99/DeepMath-103K, question/final_answer): keep difficulty ≥ 7, balance answer
  types per difficulty level — quotas proportional to count^0.5, yes/no answers capped at 5% —
  and cap yes/no at 5% overall; then hold out 500 and take 5K / 10K subsets the same way.
- **eval**: copies benchmarks (default: the paper's six) to `DIR/<name>.jsonl`, in each benchmark's
  own field names, so a machine without hub access can run `p2o eval --data-dir DIR` (or, with
  `DIR=data/eval`, find them through the benchmarks' `local` paths).

Every row written has a stable `sample_id` (a hash of the problem text, see
`p2o.tasks.data.stable_id`), `problem`, `answer`, and the source's short metadata (numbers, flags and
strings up to 200 characters; long solution texts are dropped). `prep.json` records the counts.

Flags take underscores or dashes (`--output_dir`, `--output-dir`; `--output` also works), and
`--config FILE` reads a subcommand's options from YAML (`p2o.cliutil`).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p2o.files import write_jsonl_atomic
from p2o.tasks.base import Sample
from p2o.tasks.data import DataError, LoadResult, load_samples

DEEPSCALER_ID = "agentica-org/DeepScaleR-Preview-Dataset"
DEEPMATH_ID = "zwhe99/DeepMath-103K"
SEED = 42
HOLDOUT = 500
SIZES = (5000, 10000)
MAX_META_CHARS = 200


# ---------------------------------------------------------------- splits (as the authors' release)


def _index_dataset(n: int):
    import datasets

    return datasets.Dataset.from_dict({"i": list(range(n))})


def holdout_split(
    n: int, holdout: int, seed: int = SEED, shuffle_first: bool = True
) -> tuple[list[int], list[int]]:
    """(train, held-out) row positions of `n` rows: [shuffle(seed)], then train_test_split(holdout, seed)."""
    if holdout < 1:
        raise DataError(f"--holdout must be >= 1 (got {holdout})")
    if holdout >= n:
        raise DataError(f"only {n} rows to split: --holdout {holdout} needs at least {holdout + 1}")
    ds = _index_dataset(n)
    if shuffle_first:
        ds = ds.shuffle(seed=seed)
    parts = ds.train_test_split(test_size=holdout, seed=seed)
    return list(parts["train"]["i"]), list(parts["test"]["i"])


def training_subset(positions: Sequence[int], size: int, seed: int = SEED) -> list[int]:
    """`size` of `positions`: train_test_split(test_size=size, seed)["test"]; all of them when fewer."""
    if size >= len(positions):
        return list(positions)
    ds = _index_dataset(len(positions))
    picked = ds.train_test_split(test_size=size, seed=seed)["test"]["i"]
    return [positions[i] for i in picked]


# ---------------------------------------------------------------- DeepMath answer types


_NUMBER = re.compile(r"^-?\d+(?:\.\d+|/\d+)?$")
_PERCENT = re.compile(r"^-?\d+\.?\d*%$")
_WITH_UNIT = re.compile(r"^-?\d+\.?\d*\s*[a-zA-Z]+$")
_CHOICE = re.compile(r"^(?:[A-Za-z]|\([A-Za-z]\))$")
_INTERVAL = re.compile(r"^[\[(]-?.*,.*[\])]$")
_SYMBOLS = ("√", "π", "∞", "∑", "∫")


def answer_type(answer: Any) -> str:
    """The answer-type class the DeepMath balancing uses: yes_no, numeric, interval_set, ..."""
    text = "" if answer is None else str(answer).strip()
    if not text:
        return "empty"
    if text.lower() in ("yes", "no", "true", "false"):
        return "yes_no"
    if _CHOICE.match(text):
        return "multiple_choice"
    if _NUMBER.match(text):
        return "numeric"
    if _PERCENT.match(text):
        return "percentage"
    if _WITH_UNIT.match(text):
        return "numeric_with_unit"
    if any(s in text for s in _SYMBOLS):
        return "mathematical_symbol"
    if _INTERVAL.match(text):
        return "interval_set"
    if len(text.split()) > 5:
        return "text_answer"
    return "other"


def balance_answer_types(
    samples: Sequence[Sample], max_yes_no: float = 0.05, smoothing: float = 0.5, seed: int = SEED
) -> list[Sample]:
    """Rebalance answer types per difficulty level, as the authors' DeepMath preparation does.

    Per difficulty level (in increasing order): rows with an empty answer are dropped; the other
    types get quotas proportional to count**smoothing, summing to (1 − max_yes_no) of the level's
    rows; yes/no answers get at most max_yes_no of the result; a type with fewer rows than its quota
    keeps them all, one with more is sampled. The selection is shuffled; if yes/no answers still
    exceed max_yes_no overall, they are subsampled to that share and the result shuffled again. One
    `random.Random(seed)` drives every draw, in the release's order, so the rows are the release's.
    """
    if not 0 <= max_yes_no < 1:
        raise DataError(f"--max-yes-no must be in [0, 1) (got {max_yes_no})")
    rng = random.Random(seed)
    levels: dict[Any, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        levels[s.meta.get("difficulty", 0)].append(i)
    types = [answer_type(s.answer) for s in samples]

    chosen: list[int] = []
    for level in sorted(levels):
        counts = Counter(types[i] for i in levels[level])
        counts.pop("empty", None)
        total = sum(counts.values())
        if not total:
            continue
        by_type: dict[str, list[int]] = defaultdict(list)
        for i in levels[level]:
            by_type[types[i]].append(i)
        quotas: dict[str, int] = {}
        others = {t: c for t, c in counts.items() if t != "yes_no"}
        if others:
            weights = {t: c**smoothing for t, c in others.items()}
            budget = int(total * (1 - max_yes_no))
            weight_sum = sum(weights.values())
            quotas = {t: int(w / weight_sum * budget) for t, w in weights.items()}
        if "yes_no" in counts:
            cap = int(sum(quotas.values()) * max_yes_no / (1 - max_yes_no))
            quotas["yes_no"] = min(counts["yes_no"], cap)
        for t, quota in quotas.items():
            pool = by_type[t]
            chosen.extend(pool if quota >= len(pool) else rng.sample(pool, quota))
    rng.shuffle(chosen)

    yes_no = [p for p, i in enumerate(chosen) if types[i] == "yes_no"]
    if chosen and len(yes_no) / len(chosen) > max_yes_no:
        keep_n = int(len(chosen) * max_yes_no)
        kept = rng.sample(yes_no, keep_n) if len(yes_no) > keep_n else yes_no
        yes_set = set(yes_no)
        positions = [p for p in range(len(chosen)) if p not in yes_set] + kept
        rng.shuffle(positions)
        chosen = [chosen[p] for p in positions]
    return [samples[i] for i in chosen]


# ---------------------------------------------------------------- writing


def _short_meta(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if k == "row":
            out["source_row"] = v
        elif isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= MAX_META_CHARS):
            out[k] = v
    return out


def write_samples(path: Path, samples: Sequence[Sample]) -> Path:
    rows = (
        {"sample_id": s.sample_id, "problem": s.problem, "answer": s.answer, **_short_meta(s.meta)}
        for s in samples
    )
    return write_jsonl_atomic(path, rows)


def size_label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _split_and_write(
    name: str,
    samples: list[Sample],
    out: Path,
    *,
    holdout: int,
    sizes: Sequence[int],
    seed: int,
    shuffle_first: bool,
    record: dict[str, Any],
) -> dict[str, Any]:
    train_pos, test_pos = holdout_split(len(samples), holdout, seed, shuffle_first=shuffle_first)
    files: dict[str, dict[str, Any]] = {}

    def put(stem: str, positions: Sequence[int], note: str) -> None:
        path = write_samples(out / f"{stem}.jsonl", [samples[p] for p in positions])
        files[stem] = {"path": str(path), "rows": len(positions), "what": note}

    put(f"test_{holdout}", test_pos, f"held-out rows (train_test_split(test_size={holdout}, seed={seed}))")
    put("train", train_pos, "every row not held out")
    for size in sizes:
        picked = training_subset(train_pos, size, seed)
        note = f"train_test_split(test_size={size}, seed={seed})['test'] of train"
        if len(picked) < size:
            note += f"; only {len(picked)} rows available"
        put(f"train_{size_label(size)}", picked, note)
    record.update({"dataset": name, "seed": seed, "holdout": holdout, "files": files})
    (out / "prep.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
    return record


def prepare_deepscaler(
    source: str = DEEPSCALER_ID,
    output: str | Path = "data/deepscaler",
    *,
    split: str = "train",
    holdout: int = HOLDOUT,
    sizes: Sequence[int] = SIZES,
    seed: int = SEED,
    problem_field: str = "problem",
    answer_field: str = "answer",
    skip_bad_rows: bool = False,
) -> dict[str, Any]:
    """DeepScaleR: shuffle(seed), hold out `holdout`, training subsets of `sizes`. Returns prep.json's record."""
    loaded = load_samples(
        source,
        split=split,
        problem_field=problem_field,
        answer_field=answer_field,
        skip_bad_rows=skip_bad_rows,
    )
    record = {"source": loaded.source, **_load_counts(loaded)}
    return _split_and_write(
        "deepscaler",
        loaded.samples,
        Path(output),
        holdout=holdout,
        sizes=sizes,
        seed=seed,
        shuffle_first=True,
        record=record,
    )


def prepare_deepmath(
    source: str = DEEPMATH_ID,
    output: str | Path = "data/deepmath",
    *,
    split: str = "train",
    min_difficulty: float = 7,
    max_yes_no: float = 0.05,
    smoothing: float = 0.5,
    holdout: int = HOLDOUT,
    sizes: Sequence[int] = SIZES,
    seed: int = SEED,
    problem_field: str = "question",
    answer_field: str = "final_answer",
    skip_bad_rows: bool = False,
) -> dict[str, Any]:
    """DeepMath-103K: difficulty ≥ `min_difficulty`, answer types balanced (yes/no ≤ `max_yes_no`),
    hold out `holdout`, training subsets of `sizes`. Returns prep.json's record."""
    loaded = load_samples(
        source,
        split=split,
        problem_field=problem_field,
        answer_field=answer_field,
        filters=[f"difficulty>={min_difficulty:g}"],
        skip_bad_rows=skip_bad_rows,
    )
    if not loaded.samples:
        raise DataError(f"{loaded.source}: no row has difficulty >= {min_difficulty:g}")
    balanced = balance_answer_types(loaded.samples, max_yes_no=max_yes_no, smoothing=smoothing, seed=seed)
    before = Counter(answer_type(s.answer) for s in loaded.samples)
    after = Counter(answer_type(s.answer) for s in balanced)
    record = {
        "source": loaded.source,
        **_load_counts(loaded),
        "min_difficulty": min_difficulty,
        "after_difficulty_filter": len(loaded.samples),
        "after_balancing": len(balanced),
        "max_yes_no": max_yes_no,
        "smoothing": smoothing,
        "yes_no_share": after.get("yes_no", 0) / max(1, len(balanced)),
        "answer_types_before": dict(before.most_common()),
        "answer_types_after": dict(after.most_common()),
    }
    return _split_and_write(
        "deepmath",
        balanced,
        Path(output),
        holdout=holdout,
        sizes=sizes,
        seed=seed,
        shuffle_first=False,
        record=record,
    )


def _load_counts(loaded: LoadResult) -> dict[str, Any]:
    return {"rows_read": loaded.total_rows, "bad_rows_skipped": len(loaded.skipped)}


def prepare_eval(
    benchmarks: str = "paper", output: str | Path = "data/eval", *, data_dir: str | Path | None = None
) -> dict[str, Any]:
    """Copy benchmarks' problems to `output/<name>.jsonl` (for `p2o eval --data-dir`)."""
    from p2o.tasks.benchmarks import BenchmarkError, expand_names, load_benchmark

    out = Path(output)
    record: dict[str, Any] = {"files": {}, "errors": {}}
    for name in expand_names(benchmarks):
        try:
            bench = load_benchmark(name)
            samples, source = bench.load_samples(data_dir=data_dir)
        except BenchmarkError as e:
            record["errors"][name] = str(e)
            continue
        # The benchmark's own field names, so its YAML reads the copy exactly as it reads the hub.
        names = (
            bench.id_field or "sample_id",
            bench.problem_field or "problem",
            bench.answer_field or "answer",
        )
        path = out / f"{bench.name}.jsonl"
        out.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for s in samples:
                row = {
                    **_short_meta(s.meta),
                    **dict(zip(names, (s.sample_id, s.problem, s.answer), strict=True)),
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        record["files"][bench.name] = {"path": str(path), "rows": len(samples), "source": source}
    out.mkdir(parents=True, exist_ok=True)
    (out / "prep.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
    return record


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="p2o data",
        description="Prepare the paper's training subsets and held-out rows (or local benchmark copies).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = p.add_subparsers(dest="dataset", metavar="<dataset>", required=True)

    def common(sp: argparse.ArgumentParser, source: str, out: str, pf: str, af: str) -> None:
        sp.add_argument("--source", default=source, help="Hub id or local .json/.jsonl/.parquet file.")
        sp.add_argument("--split", default="train", help="Hub split to read.")
        sp.add_argument(
            "--output_dir", "--output", dest="output_dir", type=Path, default=Path(out), help="Output folder."
        )
        sp.add_argument("--holdout", type=int, default=HOLDOUT, help="Held-out rows.")
        sp.add_argument(
            "--sizes", default=",".join(map(str, SIZES)), help="Training subset sizes, comma-separated."
        )
        sp.add_argument("--seed", type=int, default=SEED)
        sp.add_argument("--problem-field", default=pf)
        sp.add_argument("--answer-field", default=af)
        sp.add_argument(
            "--skip-bad-rows", action="store_true", help="Skip (and count) rows with an empty problem/answer."
        )

    ds = sub.add_parser("deepscaler", help="DeepScaleR: 500 held out, 5K/10K training subsets.")
    common(ds, DEEPSCALER_ID, "data/deepscaler", "problem", "answer")
    dm = sub.add_parser(
        "deepmath", help="DeepMath-103K: difficulty >= 7, yes/no <= 5%%, 500 held out, 5K/10K."
    )
    common(dm, DEEPMATH_ID, "data/deepmath", "question", "final_answer")
    dm.add_argument("--min-difficulty", type=float, default=7.0)
    dm.add_argument("--max-yes-no", type=float, default=0.05, help="Largest share of yes/no answers.")
    dm.add_argument("--smoothing", type=float, default=0.5, help="Answer-type quotas ∝ count**smoothing.")
    ev = sub.add_parser("eval", help="Copy benchmarks to DIR/<name>.jsonl for offline `p2o eval --data-dir`.")
    ev.add_argument("--benchmarks", default="paper", help="Names, YAML paths or groups, comma-separated.")
    ev.add_argument(
        "--output_dir",
        "--output",
        dest="output_dir",
        type=Path,
        default=Path("data/eval"),
        help="Output folder.",
    )
    return p


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise DataError(f"--sizes: expected comma-separated integers like 5000,10000 (got {text!r})") from e
    if not sizes or any(s < 1 for s in sizes):
        raise DataError(f"--sizes: every size must be >= 1 (got {text!r})")
    return sizes


def _print_record(record: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("file")
    table.add_column("rows", justify="right")
    table.add_column("what")
    for f in record["files"].values():
        table.add_row(Path(f["path"]).name, str(f["rows"]), f.get("what") or f.get("source", ""))
    console = Console()
    console.print(table)
    for key in (
        "rows_read",
        "bad_rows_skipped",
        "after_difficulty_filter",
        "after_balancing",
        "yes_no_share",
    ):
        if key in record:
            value = record[key]
            console.print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")


def run(argv: list[str]) -> int:
    from p2o.cliutil import parse_args

    args = parse_args(build_parser(), argv)
    if args.dataset == "eval":
        record = prepare_eval(args.benchmarks, args.output_dir)
        _print_record(record, f"p2o data eval → {args.output_dir}")
        for name, err in record["errors"].items():
            print(f"p2o data: {name}: {err}", file=sys.stderr)
        return 1 if record["errors"] else 0
    common = {
        "split": args.split,
        "holdout": args.holdout,
        "sizes": _sizes(args.sizes),
        "seed": args.seed,
        "problem_field": args.problem_field,
        "answer_field": args.answer_field,
        "skip_bad_rows": args.skip_bad_rows,
    }
    if args.dataset == "deepscaler":
        record = prepare_deepscaler(args.source, args.output_dir, **common)
    else:
        record = prepare_deepmath(
            args.source,
            args.output_dir,
            min_difficulty=args.min_difficulty,
            max_yes_no=args.max_yes_no,
            smoothing=args.smoothing,
            **common,
        )
    _print_record(record, f"p2o data {args.dataset} → {args.output_dir}")
    print(f"p2o data: wrote {args.output_dir / 'prep.json'}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from p2o.cliutil import report_errors

    return report_errors("p2o data", lambda: run(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
