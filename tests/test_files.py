"""Atomic writes (`p2o.files`): the target holds the old content or the new, never a part."""

from __future__ import annotations

import json

import pytest

from p2o.files import atomic_path, write_json_atomic, write_jsonl_atomic, write_text_atomic


def test_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "sub" / "state.json"
    write_json_atomic(path, {"step": 1, "name": "é", "path": tmp_path})
    write_json_atomic(path, {"step": 2})
    assert json.loads(path.read_text()) == {"step": 2}
    write_jsonl_atomic(tmp_path / "rows.jsonl", ({"i": i} for i in range(3)))
    assert [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()] == [
        {"i": i} for i in range(3)
    ]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["rows.jsonl", "state.json", "sub"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = write_text_atomic(tmp_path / "summary.md", "old\n")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.suffix == ".md" and tmp.parent == path.parent
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["summary.md"]
