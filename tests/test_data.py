"""Dataset loading from local files: field mapping, ids, filters, subsets, bad rows."""

from __future__ import annotations

import json

import pytest

from p2o.tasks import Sample, Task, Verdict
from p2o.tasks.data import DataError, load_samples, read_hard_samples, task_samples, to_dataset


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    {"question": f"What is {i}+{i}?", "final_answer": str(2 * i), "difficulty": i % 10} for i in range(40)
]


def test_jsonl_with_deepmath_fields(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", ROWS)
    res = load_samples(str(p), problem_field="question", answer_field="final_answer")
    assert len(res.samples) == 40
    assert res.samples[3].problem == "What is 3+3?" and res.samples[3].answer == "6"
    assert res.samples[3].meta["difficulty"] == 3


def test_fields_guessed_and_ids_stable_under_subset(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", ROWS)
    full = {s.problem: s.sample_id for s in load_samples(str(p)).samples}
    sub = load_samples(str(p), max_samples=10, seed=7).samples
    assert len(sub) == 10
    assert all(full[s.problem] == s.sample_id for s in sub)
    assert [s.sample_id for s in load_samples(str(p), max_samples=10, seed=7).samples] == [
        s.sample_id for s in sub
    ]
    assert [s.sample_id for s in load_samples(str(p), max_samples=10, seed=8).samples] != [
        s.sample_id for s in sub
    ]
    assert len(set(full.values())) == 40


def test_json_list_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"problem": "1+1", "answer": 2}, {"problem": "2+2", "answer": "4"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist([{"problem": "1+1", "answer": "2"}]), tmp_path / "d.parquet")
    assert [s.answer for s in load_samples(str(tmp_path / "d.json")).samples] == ["2", "4"]
    assert load_samples(str(tmp_path / "d.parquet")).samples[0].problem == "1+1"


def test_filters(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", ROWS)
    res = load_samples(str(p), filters=["difficulty>=7"])
    assert len(res.samples) == 12 and all(s.meta["difficulty"] >= 7 for s in res.samples)
    with pytest.raises(DataError, match="bad filter"):
        load_samples(str(p), filters=["difficulty ~ 7"])


def test_id_field_and_duplicates(tmp_path):
    p = write_jsonl(
        tmp_path / "d.jsonl",
        [{"id": "a", "problem": "x", "answer": "1"}, {"id": "b", "problem": "x", "answer": "1"}],
    )
    assert [s.sample_id for s in load_samples(str(p), id_field="id").samples] == ["a", "b"]
    ids = [s.sample_id for s in load_samples(str(p)).samples]
    assert len(set(ids)) == 2 and ids[1] == ids[0] + "-2"


def test_bad_row_error_names_file_row_field(tmp_path):
    rows = [*ROWS[:5], {"question": "Q", "final_answer": ""}, {"question": "Q2"}]
    p = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_samples(str(p))
    msg = str(e.value)
    # 1-based, as editors count: the sixth line of the file.
    assert "bad.jsonl line 6:" in msg and "'final_answer'" in msg and "--skip_bad_rows" in msg
    res = load_samples(str(p), skip_bad_rows=True)
    assert len(res.samples) == 5
    assert [(s.row, s.field, s.reason) for s in res.skipped] == [
        (6, "final_answer", "empty"),
        (7, "final_answer", "missing"),
    ]
    assert "2 bad rows skipped" in res.summary()
    assert [s.meta["row"] for s in res.samples] == [1, 2, 3, 4, 5]


def test_row_numbers_are_one_based_in_every_format(tmp_path):
    rows = [{"problem": "a", "answer": "1"}, {"problem": "b", "answer": ""}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"d.json row 2: field 'answer' is empty"):
        load_samples(str(tmp_path / "d.json"))
    p = tmp_path / "blank.jsonl"  # blank lines count, as in an editor
    p.write_text('{"problem": "a", "answer": "1"}\n\n{"problem": "b"}\n')
    with pytest.raises(DataError, match=r"blank.jsonl line 3: field 'answer' is missing"):
        load_samples(str(p))


def test_undecodable_lines_are_named_and_skipped(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(
        b'{"problem": "a", "answer": "1"}\n{"problem": "caf\xe9", "answer": "2"}\n{"problem": "b", "answer": "3"}\n'
    )
    with pytest.raises(DataError) as e:
        load_samples(str(p))
    assert "latin1.jsonl line 2: not valid UTF-8 (byte 0xe9 at column 17)" in str(e.value)
    assert "--skip_bad_rows" in str(e.value)
    res = load_samples(str(p), skip_bad_rows=True)
    assert [s.problem for s in res.samples] == ["a", "b"] and res.total_rows == 3
    assert [(s.row, s.field) for s in res.skipped] == [(2, "")]
    assert "1 bad rows skipped (first: line 2: not valid UTF-8" in res.summary()
    q = tmp_path / "latin1.json"  # a JSON document cannot lose one row: the error names the line
    q.write_bytes(b'[\n {"problem": "a", "answer": "1"},\n {"problem": "caf\xe9", "answer": "2"}\n]')
    with pytest.raises(DataError, match=r"latin1.json line 3: not valid UTF-8 \(byte 0xe9"):
        load_samples(str(q), skip_bad_rows=True)


def test_invalid_json_lines_are_skipped_with_the_flag(tmp_path):
    p = tmp_path / "broken.jsonl"
    p.write_text('{"problem": "a", "answer": "1"}\n{not json\n[1, 2]\n')
    res = load_samples(str(p), skip_bad_rows=True)
    assert len(res.samples) == 1
    assert [s.describe() for s in res.skipped] == [
        "line 2: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        "line 3: expected a JSON object, got list",
    ]


def test_over_long_problems_are_named_and_skipped(tmp_path):
    p = write_jsonl(
        tmp_path / "long.jsonl", [{"problem": "x" * 50, "answer": "1"}, {"problem": "y", "answer": "2"}]
    )
    with pytest.raises(DataError) as e:
        load_samples(str(p), max_problem_chars=40)
    msg = str(e.value)
    assert "long.jsonl line 1: field 'problem' is 50 characters long, more than max_problem_chars=40" in msg
    assert "--max_problem_chars" in msg and "--skip_bad_rows" in msg
    res = load_samples(str(p), max_problem_chars=40, skip_bad_rows=True)
    assert [s.problem for s in res.samples] == ["y"] and res.skipped[0].row == 1
    assert len(load_samples(str(p), max_problem_chars=0).samples) == 2  # 0: no limit
    assert len(load_samples(str(p)).samples) == 2  # the default limit is generous


def test_duplicates_are_reported_and_dropped_with_the_flag(tmp_path):
    rows = [
        {"problem": "What is 1+1?", "answer": "2"},
        {"problem": "What is 2+2?", "answer": "4"},
        {"problem": "What is  1+1?", "answer": "2"},  # the same problem, spaced differently
        {"problem": "What is 1+1?", "answer": "3"},
    ]
    p = write_jsonl(tmp_path / "dups.jsonl", rows)
    kept = load_samples(str(p))
    assert len(kept.samples) == 4 and kept.duplicates == 2
    assert kept.notes == [
        f"{p}: 2 rows repeat an earlier row's problem (first: line 3 repeats line 1); kept, so they weigh "
        "double; pass --drop_duplicates to drop them."
    ]
    assert "2 duplicate rows kept" in kept.summary()
    dropped = load_samples(str(p), drop_duplicates=True)
    assert [s.answer for s in dropped.samples] == ["2", "4"] and dropped.duplicates == 2
    assert "dropped" in dropped.notes[0] and "2 duplicate rows dropped" in dropped.summary()
    single = write_jsonl(tmp_path / "d2.jsonl", [rows[0], rows[3]])
    assert "line 2 repeats line 1 with a different answer" in load_samples(str(single)).notes[0]


def test_invalid_json_line_and_missing_column(tmp_path):
    p = tmp_path / "broken.jsonl"
    p.write_text('{"problem": "a", "answer": "1"}\n{not json\n')
    with pytest.raises(DataError, match=r"broken.jsonl line 2"):
        load_samples(str(p))
    q = write_jsonl(tmp_path / "cols.jsonl", [{"text": "a", "label": "b"}])
    with pytest.raises(DataError, match="--problem_field"):
        load_samples(str(q))
    with pytest.raises(DataError, match="does not exist"):
        load_samples(str(tmp_path / "nope.jsonl"))


def _task():
    return Task(
        name="t",
        build_messages=lambda q: [{"role": "user", "content": q}],
        verifier=lambda c, r: Verdict(float(c == r), ""),
        splits=lambda split: [Sample(f"{split}-{i}", f"p{i}", str(i)) for i in range(5)],
    )


def test_task_samples_and_dataset(tmp_path):
    t = _task()
    res = task_samples(t, split="test")
    assert [s.sample_id for s in res.samples][:2] == ["test-0", "test-1"]
    ds = to_dataset(t, res.samples)
    assert ds.column_names == ["prompt", "sample_id", "problem", "answer"]
    assert ds[1]["prompt"] == [{"role": "user", "content": "p1"}]
    t.splits = None
    with pytest.raises(DataError, match="--dataset"):
        task_samples(t)


def test_read_hard_samples(tmp_path):
    known = {"k1": Sample("k1", "p", "a")}
    p = write_jsonl(
        tmp_path / "hard.jsonl", [{"sample_id": "k1"}, {"sample_id": "n1", "problem": "q", "answer": "2"}]
    )
    got = read_hard_samples(p, known)
    assert [s.sample_id for s in got] == ["k1", "n1"] and got[1].answer == "2"
    write_jsonl(p, [{"sample_id": "zz"}])
    with pytest.raises(DataError, match=r"line 1.*'problem'"):
        read_hard_samples(p, known)
