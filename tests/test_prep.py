"""`p2o data`: the paper's subsets from small local files — counts, filters, splits, ids."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import pytest

from p2o.tasks import Sample
from p2o.tasks.data import DataError, load_samples, stable_id
from p2o.tasks.prep import (
    answer_type,
    balance_answer_types,
    main,
    prepare_deepmath,
    prepare_deepscaler,
    prepare_eval,
)

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
DEEPSCALER = FIXTURES / "deepscaler_mini.jsonl"
DEEPMATH = FIXTURES / "deepmath_mini.jsonl"


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_deepscaler_split_is_the_authors_and_subsets_nest(tmp_path):
    record = prepare_deepscaler(str(DEEPSCALER), tmp_path, holdout=10, sizes=(20, 40))
    files = {k: v["rows"] for k, v in record["files"].items()}
    assert files == {"test_10": 10, "train": 50, "train_20": 20, "train_40": 40}
    test, train = read(tmp_path / "test_10.jsonl"), read(tmp_path / "train.jsonl")
    t20, t40 = read(tmp_path / "train_20.jsonl"), read(tmp_path / "train_40.jsonl")

    # The authors' release: shuffle(seed=42), train_test_split(test_size=500, seed=42), then
    # train_test_split(test_size=5000, seed=42)["test"] of the rest — here with 10 and 20.
    raw = [json.loads(line) for line in DEEPSCALER.read_text().splitlines()]
    parts = datasets.Dataset.from_list(raw).shuffle(seed=42).train_test_split(test_size=10, seed=42)
    assert [r["problem"] for r in test] == parts["test"]["problem"]
    assert [r["problem"] for r in train] == parts["train"]["problem"]
    assert [r["problem"] for r in t20] == parts["train"].train_test_split(test_size=20, seed=42)["test"][
        "problem"
    ]

    ids = lambda rows: {r["sample_id"] for r in rows}  # noqa: E731
    assert not ids(test) & ids(train) and len(ids(test) | ids(train)) == 60
    assert ids(t20) < ids(t40) < ids(train)
    row = test[0]
    assert row["sample_id"] == stable_id(row["problem"]) and set(row) >= {"problem", "answer", "source_row"}
    assert "solution" in row  # short metadata is kept
    # The files are training data as they are: ids survive the round trip.
    loaded = load_samples(str(tmp_path / "train_20.jsonl"), id_field="sample_id")
    assert [s.sample_id for s in loaded.samples] == [r["sample_id"] for r in t20]


def test_default_counts_are_the_papers(tmp_path, capsys):
    src = tmp_path / "big.jsonl"
    with src.open("w") as f:
        for i in range(11_000):
            f.write(json.dumps({"problem": f"What is {i} plus one?", "answer": str(i + 1)}) + "\n")
    assert main(["deepscaler", "--source", str(src), "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    counts = {
        k: v["rows"] for k, v in json.loads((tmp_path / "out" / "prep.json").read_text())["files"].items()
    }
    assert counts == {"test_500": 500, "train": 10_500, "train_5k": 5_000, "train_10k": 10_000}
    for name, n in counts.items():
        assert f"{name}.jsonl" in out and str(n) in out
        assert len((tmp_path / "out" / f"{name}.jsonl").read_text().splitlines()) == n


def test_deepmath_keeps_hard_rows_and_caps_yes_no(tmp_path):
    record = prepare_deepmath(str(DEEPMATH), tmp_path, holdout=5, sizes=(20, 40))
    raw = read(DEEPMATH)
    hard = [r for r in raw if r["difficulty"] >= 7]
    assert record["rows_read"] == 200 and record["after_difficulty_filter"] == len(hard) == 100
    kept = read(tmp_path / "train.jsonl") + read(tmp_path / "test_5.jsonl")
    assert len(kept) == record["after_balancing"] == 72
    assert all(r["difficulty"] >= 7 for r in kept)
    types = Counter(answer_type(r["answer"]) for r in kept)
    assert types["yes_no"] / len(kept) <= 0.05 and types["yes_no"] >= 1
    assert sum(answer_type(r["final_answer"]) == "yes_no" for r in hard) == 20  # before: 20%
    assert {k: v["rows"] for k, v in record["files"].items()} == {
        "test_5": 5,
        "train": 67,
        "train_20": 20,
        "train_40": 40,
    }
    row = kept[0]
    assert set(row) >= {"sample_id", "problem", "answer", "difficulty", "topic"}
    assert "r1_solution_1" not in row  # long solution texts are dropped
    # Deterministic: the same source and seed give the same files.
    again = tmp_path / "again"
    prepare_deepmath(str(DEEPMATH), again, holdout=5, sizes=(20, 40))
    assert (again / "train_20.jsonl").read_text() == (tmp_path / "train_20.jsonl").read_text()


def test_balancing_by_hand():
    def s(i: int, answer: str, difficulty: float = 7.0) -> Sample:
        return Sample(f"s{i}", f"p{i}", answer, {"difficulty": difficulty})

    # One level: 19 numeric and 5 yes/no answers. Budget for the others int(24 * 0.95) = 22 >= 19, so
    # all numeric rows stay; yes/no get int(19 * 0.05 / 0.95) = 1: 20 rows, exactly 5% yes/no.
    rows = [s(i, str(i)) for i in range(19)] + [s(19 + i, "Yes") for i in range(5)]
    out = balance_answer_types(rows)
    assert len(out) == 20 and Counter(answer_type(r.answer) for r in out) == {"numeric": 19, "yes_no": 1}
    # Quotas grow as count**0.5: 100 numeric vs 4 intervals -> int(10 / 12 * 98) = 81 and all 4 intervals.
    rows = [s(i, str(i)) for i in range(100)] + [s(100 + i, f"[0, {i}]") for i in range(4)]
    out = balance_answer_types(rows)
    assert Counter(answer_type(r.answer) for r in out) == {"numeric": 81, "interval_set": 4}
    # Levels are balanced one by one. A level of yes/no answers only keeps none (their cap is a share
    # of the other types); a level of 3 numeric answers keeps int(3 * 0.95) = 2 of them.
    rows = [s(i, "No", 8.0) for i in range(10)] + [s(10 + i, str(i), 9.0) for i in range(3)]
    kept = [r.sample_id for r in balance_answer_types(rows)]
    assert len(kept) == 2 and set(kept) < {"s10", "s11", "s12"}


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("Yes", "yes_no"),
        ("false", "yes_no"),
        ("B", "multiple_choice"),
        ("(c)", "multiple_choice"),
        ("-12", "numeric"),
        ("3.25", "numeric"),
        ("7/9", "numeric"),
        ("45%", "percentage"),
        ("12 cm", "numeric_with_unit"),
        ("2√3", "mathematical_symbol"),
        ("[0, 1)", "interval_set"),
        ("(1, 2)", "interval_set"),
        ("the set of all even primes", "text_answer"),
        ("\\frac{\\pi}{4}", "other"),
        ("", "empty"),
    ],
)
def test_answer_types(answer, kind):
    assert answer_type(answer) == kind


def test_errors_name_the_flag_and_the_counts(tmp_path, capsys):
    with pytest.raises(DataError, match="only 60 rows to split: --holdout 60"):
        prepare_deepscaler(str(DEEPSCALER), tmp_path, holdout=60)
    assert main(["deepscaler", "--source", str(DEEPSCALER), "--output", str(tmp_path), "--sizes", "5k"]) == 2
    assert "--sizes" in capsys.readouterr().err
    assert main(["deepmath", "--source", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path)]) == 2
    assert "nope.jsonl does not exist" in capsys.readouterr().err
    assert (
        main(["deepmath", "--source", str(DEEPMATH), "--output", str(tmp_path), "--min-difficulty", "10"])
        == 2
    )
    assert "no row has difficulty >= 10" in capsys.readouterr().err


def test_eval_copies_benchmarks_for_offline_runs(tmp_path):
    from p2o.evaluation import load_benchmark

    record = prepare_eval(str(FIXTURES / "mini_math.yaml"), tmp_path)
    assert record["files"]["mini_math"]["rows"] == 6 and record["errors"] == {}
    bench = load_benchmark(FIXTURES / "mini_math.yaml")
    samples, source = bench.load_samples(data_dir=tmp_path)
    assert source == str(tmp_path / "mini_math.jsonl")
    assert [s.answer for s in samples][:2] == ["56", "\\frac{5}{6}"]
