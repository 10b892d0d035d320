"""`p2o evolve` on the toy world: a tiny toy policy (the build's `tiny` preset, seconds to build)
served by a real `transformers serve`, hard samples mined from the toy task, the scripted toy teacher
reflecting. The tiny preset knows little, so this checks the whole path, not the figures (those are
measured with the default toy model; see docs/evolve.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("p2o.toy.teacher")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_toy_model(tmp_path_factory):
    from p2o.toy import ensure_toy_model

    return ensure_toy_model(
        seed=0, output=tmp_path_factory.mktemp("toy") / "model", preset="tiny", progress=False
    )


def test_toy_teacher_is_the_scripted_one():
    from p2o.evolve import make_reflector

    teacher = make_reflector("toy-teacher", temperature=1.0, max_tokens=64)
    reply = teacher("no examples here")
    assert teacher.name == "toy-teacher" and "```" in reply.text


def test_p2o_evolve_on_the_toy_world(tiny_toy_model, tmp_path):
    from p2o.evolve.cli import main

    base = yaml.safe_load((ROOT / "configs" / "toy_evolve.yaml").read_text())
    base.update(
        model_name_or_path=str(tiny_toy_model),
        max_samples=16,
        num_generations=2,
        per_device_train_batch_size=2,
        hard_max_successes=1,
        gepa_max_metric_calls=40,
        min_hard_samples=1,
    )
    cfg = tmp_path / "toy_evolve.yaml"
    cfg.write_text(yaml.safe_dump(base))
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "--output-dir", str(out)]) == 0
    stats = json.loads((out / "phase.json").read_text())
    assert stats["status"] == "complete" and stats["reflection"] == "toy-teacher"
    assert stats["metric_calls"] >= 40 and stats["reflection_calls"] >= 1
    mined = [json.loads(line) for line in (out / "hard_samples.jsonl").read_text().splitlines()]
    assert len(mined) == stats["hard_samples"] and all(m["successes"] <= 1 for m in mined)
    templates = json.loads((out / "templates.json").read_text())["templates"]
    assert templates[0]["text"] == "" and all(set(t["dev_scores"]) for t in templates)
    assignments = json.loads((out / "assignments.json").read_text())
    assert all(len(v) == 2 for v in assignments.values())


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_assign_score_all_on_the_real_toy_policy(tmp_path):
    """A phase on the default toy policy (built once, then cached) with `assign_score_all`: the cover
    templates are scored on the train-half hard samples too, and a train-half sample gets only
    templates that solved it."""
    from p2o.evolve.cli import main
    from p2o.toy import ensure_toy_model

    base = yaml.safe_load((ROOT / "configs" / "toy_evolve.yaml").read_text())
    base.update(
        model_name_or_path=str(ensure_toy_model(seed=0, progress=False)),
        max_samples=48,
        gepa_max_metric_calls=200,
        assign_score_all=True,
    )
    cfg = tmp_path / "toy_evolve.yaml"
    cfg.write_text(yaml.safe_dump(base))
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "--output-dir", str(out)]) == 0
    stats = json.loads((out / "phase.json").read_text())
    assert stats["cover"] and stats["train_size"] > 0
    assert stats["assign_metric_calls"] == len(stats["cover"]) * stats["train_size"]
    templates = {t["id"]: t for t in json.loads((out / "templates.json").read_text())["templates"]}
    train_scores = {tid: t["train_scores"] for tid, t in templates.items() if "train_scores" in t}
    assert set(train_scores) == set(stats["cover"])
    train_ids = set().union(*(set(s) for s in train_scores.values()))
    assignments = json.loads((out / "assignments.json").read_text())
    for sid in set(assignments) & train_ids:
        assert any(train_scores[tid][sid] >= 1.0 for tid in set(assignments[sid])), sid
    solved = {sid for s in train_scores.values() for sid, v in s.items() if v >= 1.0}
    assert len(solved) * 2 >= stats["train_size"]  # the teacher finds the rules: most are solved
    assert set(assignments) & train_ids == solved
    assert stats["train_solved_frac"] == pytest.approx(len(solved) / stats["train_size"])
