"""What a partial result is made of: held-out accuracy and round records per sample group
(`Task.group_of`), the template lifetime rule, no phase after the last step, and the demo's
summary over worlds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from p2o.evaluation.runner import group_accuracy
from p2o.tasks.base import Sample
from tests.test_train import ScriptedPhase, make_trainer, tiny_model  # noqa: F401 (fixture)
from tests.tiny_world import tiny_task


def parity(sample: Sample) -> str:
    return "even" if int(sample.sample_id[1:]) % 2 == 0 else "odd"


def test_group_accuracy_per_label():
    task = tiny_task()
    samples = [Sample(f"s{i}", "p", "0") for i in range(4)]
    assert group_accuracy(task, samples, [1, 0, 1, 1], 1) == {}  # the task does not group
    task.group_of = parity
    assert group_accuracy(task, samples, [2, 0, 1, 2], 2) == {"even": 0.75, "odd": 0.5}


def test_toy_labels_every_operator_by_role_and_rule():
    from p2o.tasks import get_task

    task = get_task("toy", seed=3, n_test=60)
    hard = {task.group_of(s) for s in task.splits("test_hard")}
    easy = {task.group_of(s) for s in task.splits("test_easy")}
    assert len(hard) == 3 and all(g.startswith("hard ") for g in hard)
    assert {g.split()[0] for g in easy} == {"easy", "familiar"} and len(easy) == 6
    # each hard operator hides the rule of one familiar operator
    assert {g.split()[-1] for g in hard} == {g.split()[-1] for g in easy if g.startswith("familiar")}


def test_round_records_per_group_figures(tiny_model, tmp_path):  # noqa: F811
    tr = make_trainer(tiny_model, tmp_path, max_steps=2)
    tr.task.group_of = parity
    tr._count_groups([("s0", 1.0, True), ("s0", 0.0, False), ("s1", 0.0, False), ("s2", 1.0, False)])
    for sid in ("s0", "s1"):
        tr.tracker.update(sid, 0, 3, False, 1)
    record = tr.run_p2o_phase()
    g = record["groups"]
    assert g["even"] == {
        "hard": 1,
        "assigned": 1,
        "templated_success": 1.0,
        "templated_rollouts": 1,
        "plain_success": 0.5,
        "plain_rollouts": 2,
    }
    assert (
        g["odd"]["hard"] == 1 and g["odd"]["templated_success"] is None and g["odd"]["plain_success"] == 0.0
    )
    assert tr._group_window == {}  # the next round counts afresh
    saved = json.loads((tr.round_dir(1) / "round.json").read_text())
    assert saved["groups"] == g


@pytest.mark.parametrize("lifetime", ["retire", "round"])
def test_template_lifetime(tiny_model, tmp_path, lifetime):  # noqa: F811
    tr = make_trainer(tiny_model, tmp_path, template_lifetime=lifetime, min_hard_samples=2)
    tr.templates = {"r0:old": "Old."}
    tr.assignments = {"s3": ["r0:old"] * 3}
    tr.tracker.update("s0", 0, 3, False, 1)
    tr.tracker.update("s1", 0, 3, False, 1)
    tr.run_p2o_phase()  # 2 hard: the phase runs and assigns s0, s1
    expected = {"s0", "s1"} | ({"s3"} if lifetime == "retire" else set())
    assert set(tr.assignments) == expected
    tr.tracker.update("s1", 3, 3, True, 2)  # one hard sample left: the next phase is skipped
    record = tr.run_p2o_phase()
    assert record["status"] == "skipped"
    # the authors' rule: nothing is templated after a skipped phase; p2o's keeps every assignment
    assert set(tr.assignments) == (expected if lifetime == "retire" else set())
    assert ("expired_assignments" in record) == (lifetime == "round")


def test_no_phase_after_the_last_step(tiny_model, tmp_path):  # noqa: F811
    phase = ScriptedPhase()
    tr = make_trainer(
        tiny_model,
        tmp_path,
        phase_runner=phase,
        max_steps=2,
        phase_every_steps=1,
        phase_after_last_step=False,
    )
    tr.train()
    assert [r["global_step"] for r in tr.rounds] == [1]  # step 2 is the last: its templates would go unused


def test_bad_lifetime_is_refused(tmp_path):
    from p2o.config import ConfigError
    from tests.test_train import make_config

    with pytest.raises(ConfigError, match="template_lifetime: must be retire or round"):
        make_config(tmp_path, template_lifetime="forever")


def world(hard_p2o, hard_grpo, easy, easy_min, t_grpo=10.0, t_p2o=12.0):
    def row(hard, t):
        return {
            "hard_acc": hard,
            "easy_acc": easy,
            "easy_min": easy_min,
            "train_seconds": t,
            "hard_acc_curve": [[0, 0.0], [10, hard]],
            "easy_acc_curve": [[0, 1.0], [10, easy]],
            "groups": {},
        }

    return {
        "steps": 10,
        "methods": {
            "grpo": row(hard_grpo, t_grpo),
            "grpo_2k": row(0.0, 2 * t_grpo),
            "p2o_teacher": row(hard_p2o, t_p2o),
        },
    }


def test_demo_summary_spread_and_targets(tmp_path):
    from p2o.demo import plot_curves, summarize, summary_markdown

    worlds = {2: world(0.9, 0.0, 0.95, 0.9), 3: world(0.7, 0.2, 0.88, 0.8, t_p2o=20.0)}
    s = summarize(worlds)
    assert s["methods"]["p2o_teacher"]["hard_acc"] == {"mean": 0.8, "min": 0.7, "max": 0.9}
    assert s["methods"]["p2o_teacher"]["time_vs_grpo"] == {"mean": 1.6, "min": 1.2, "max": 2.0}
    assert all(s["targets"]["2"].values())
    assert s["targets"]["3"] == {
        "p2o_hard": False,
        "grpo_hard": False,
        "easy_end": False,
        "easy_way": False,
        "p2o_time": False,
    }
    md = summary_markdown(worlds, s)
    assert "| 2 |" in md and "met" in md and "missed: p2o_hard, grpo_hard" in md
    plot_curves(worlds, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_demo_seed_and_set_flags(tmp_path, capsys):
    from p2o.demo import main, parse_seeds, parse_sets

    assert parse_seeds("0,1,4-6") == [0, 1, 4, 5, 6]
    assert parse_sets(["template_lifetime=round", "max-phases=2", "learning_rate=1e-3"]) == {
        "template_lifetime": "round",
        "max_phases": 2,
        "learning_rate": 0.001,
    }
    for argv, message in (
        (["--seeds", "x"], "--seeds x"),
        (["--seed", "1", "--seeds", "2"], "give one of them"),
        (["--set", "template_lifetime=forever"], "template_lifetime"),
        (["--set", "nonsense"], "KEY=VALUE"),
    ):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--output-dir", str(tmp_path / "out")])
        assert e.value.code == 2 and message in capsys.readouterr().err, argv
    assert not (tmp_path / "out").exists()


def test_captured_output_takes_child_processes_and_c_level_writes(tmp_path):
    from p2o.demo import captured_output

    log = tmp_path / "run/console.log"
    with captured_output(log):
        print("from python")
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('from a child\\n')"], check=True)
    text = log.read_text()
    assert "from python" in text and "from a child" in text


def test_round_lifetime_recipe_key_reaches_the_config(tmp_path):
    from p2o.demo import load_recipe, method_config
    from p2o.resources import find_recipe

    cfg = method_config(
        "p2o_teacher", load_recipe(find_recipe("toy_p2o")), 3, Path(tmp_path), {"template_lifetime": "round"}
    )
    assert cfg.template_lifetime == "round" and cfg.seed == 3 and cfg.reflection == "toy-teacher"


def test_toy_rules_reads_which_rule_each_operator_answers(tmp_path, capsys):
    from p2o.toy import ensure_toy_model
    from p2o.toy.answers import answer_rules
    from p2o.toy.cli import main

    model = ensure_toy_model(seed=0, output=tmp_path / "toy", preset="tiny")
    capsys.readouterr()  # a build's progress (an empty cache), not the command's output
    table = answer_rules(model, seed=0, n_test=30)
    assert len(table) == 9 and {g.split()[0] for g in table} == {"easy", "familiar", "hard"}
    assert all(0.0 < v <= 1.0 for fracs in table.values() for v in fracs.values())
    assert main(["rules", "--model", str(model), "--n_test", "30", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == table
    assert main(["rules", "--model", str(tmp_path / "nothing")]) == 2
    assert "no policy there" in capsys.readouterr().err


def test_demo_says_failed_phases_and_exits_1_when_too_few_finished(tmp_path, monkeypatch, capfd):
    """A P²O method whose phases failed trained as GRPO: the demo names the rounds and exits 1."""
    import p2o.demo as demo
    from p2o.train.cli import phase_totals

    rounds = [
        {"round": 1, "global_step": 32, "status": "failed", "error": "TimeoutError: [teacher] slow"},
        {"round": 2, "global_step": 64, "status": "skipped"},
    ]

    def fake_run_method(name, recipe, seed, out, model, overrides, line=None):
        row = world(0.0, 0.0, 1.0, 1.0)["methods"]["grpo"]
        row.update(zero_std_frac=None, gepa_metric_calls=0, rounds=rounds, steps=64, timings={})
        row["phases"] = phase_totals(rounds if name == "p2o_teacher" else [])
        cfg = demo.method_config(name, recipe, seed, out, overrides)
        from p2o.train.cli import phase_shortfall

        row["phase_shortfall"] = phase_shortfall(row["phases"], cfg)
        return row

    monkeypatch.setattr(demo, "run_method", fake_run_method)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    code = demo.main(
        ["--methods", "grpo,p2o_teacher", "--model", str(model), "--output-dir", str(tmp_path / "o")]
    )
    err = " ".join(capfd.readouterr().err.split())  # the console wraps long lines
    assert code == 1
    assert "p2o_teacher: round 1 (step 32) failed: TimeoutError: [teacher] slow" in err
    assert "0 of 1 phases finished, fewer than min_phase_success=0.5" in err
    assert "too few phases finished in world 0 p2o_teacher" in err
    saved = json.loads((tmp_path / "o/results.json").read_text())  # the results are still written
    assert (
        saved["methods"]["p2o_teacher"]["phase_shortfall"]
        and saved["methods"]["grpo"]["phase_shortfall"] is None
    )
