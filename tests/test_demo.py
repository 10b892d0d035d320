"""`p2o demo` end to end on a tiny toy build: every method trains, is measured, and the files appear."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_quick_demo_writes_results_table_and_curves(tmp_path):
    from p2o.demo import run_demo
    from p2o.toy import ensure_toy_model

    model = ensure_toy_model(seed=0, output=tmp_path / "toy", preset="tiny")
    overrides = {
        "max_steps": 2,
        "per_device_train_batch_size": 24,
        "phase_every_steps": 1,
        "min_hard_samples": 1,
        "max_phases": 1,
        "gepa_max_metric_calls": 16,
        "dev_max_size": 4,
        "heldout_every_steps": 1,
    }
    results = run_demo(["grpo", "p2o_teacher"], 0, tmp_path / "demo", overrides=overrides, model=str(model))
    saved = json.loads((tmp_path / "demo/results.json").read_text())
    assert saved["methods"].keys() == {"grpo", "p2o_teacher"} == results["methods"].keys()
    for name, row in saved["methods"].items():
        assert 0.0 <= row["hard_acc"] <= 1.0 and 0.0 <= row["easy_acc"] <= 1.0, name
        assert [p[0] for p in row["hard_acc_curve"]] == [0, 1, 2]
        assert row["train_seconds"] > 0
    assert saved["methods"]["grpo"]["gepa_metric_calls"] == 0
    # How the build came to be travels with the results.
    assert saved["build"]["attempts"] == 1 and saved["build"]["pretrain_steps"] == 20
    assert saved["methods"]["p2o_teacher"]["rounds"][0]["status"] in ("done", "skipped")
    assert "| p2o_teacher |" in (tmp_path / "demo/results.md").read_text()
    assert (tmp_path / "demo/curves.png").stat().st_size > 1000


def test_demo_names_a_model_folder_that_holds_no_policy(tmp_path, capsys):
    from p2o.demo import main

    with pytest.raises(SystemExit) as e:
        main(["--quick", "--model", str(tmp_path / "nothing"), "--output-dir", str(tmp_path / "out")])
    assert e.value.code == 2
    assert "--model" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_demo_builds_the_recipes_world_and_refuses_a_policy_built_for_another(tmp_path, capsys):
    from p2o.demo import check_model_world, main, toy_world_options
    from p2o.errors import UserError
    from p2o.toy import world as W

    assert toy_world_options({"task_kwargs": {"seed": 0, "n_train": 256, "digits": 5}}) == {"digits": 5}
    assert toy_world_options({}) == {}
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "world.json").write_text(json.dumps(W.make_world(0).to_dict()))
    check_model_world(str(model), 0, {})  # the same world: accepted
    with pytest.raises(UserError, match="digits 4 vs 5"):
        check_model_world(str(model), 0, {"digits": 5})
    with pytest.raises(UserError, match="seed 0 vs 1"):
        check_model_world(str(model), 1, {})
    # From the command line: stopped with the message before any training.
    code = main(["--quick", "--seed", "1", "--model", str(model), "--output-dir", str(tmp_path / "out")])
    assert code != 0
    assert "built for another world" in capsys.readouterr().err
    assert not (tmp_path / "out/grpo").exists()


def test_demo_says_when_a_given_policy_would_be_refused_as_a_build(tmp_path):
    from dataclasses import asdict

    from p2o.demo import build_report, unfit_figures
    from p2o.toy.build import settings_from

    model = tmp_path / "model"
    model.mkdir()
    assert unfit_figures(build_report(str(model))) == []  # no report.json: nothing to say
    report = {
        "instructed_acc": 0.95,
        "easy_acc": 0.7,
        "hard_acc": 0.0,
        "hard_acc_by_operator": {"⊗ add": 0.02},
    }
    (model / "report.json").write_text(json.dumps({**report, "settings": asdict(settings_from())}))
    short = unfit_figures(build_report(str(model)))
    assert short[0] == "easy_acc 0.700 < 0.9" and "hard_acc_by_operator['⊗ add'] 0.020 > 0.01" in short[1]
    # A reduced build is not expected to learn.
    (model / "report.json").write_text(json.dumps({**report, "settings": asdict(settings_from("tiny"))}))
    assert unfit_figures(build_report(str(model))) == []


def test_a_long_quiet_step_shows_what_runs_and_for_how_long(tmp_path):
    import io
    import re
    import time

    from rich.console import Console

    from p2o.demo import captured_output, elapsed_line

    console = Console(record=True, file=io.StringIO(), width=200)
    with elapsed_line(console, "world 7: building the toy policy"), captured_output(tmp_path / "build.log"):
        print("pre-training noise")
        time.sleep(1.2)
    shown = console.export_text()
    seconds = re.findall(r"world 7: building the toy policy (\d+) s", shown)
    assert seconds and int(seconds[-1]) >= 1, shown
    assert "noise" not in shown and "pre-training noise" in (tmp_path / "build.log").read_text()


def test_parallel_order_runs_grpo_beside_p2o_then_longest_first():
    from p2o.demo import METHODS, QUICK, parallel_order, threads_per_job

    assert parallel_order(list(METHODS)) == ["grpo", "p2o_teacher", "p2o_no_distill", "grpo_2k", "p2o_self"]
    assert parallel_order(list(QUICK)) == ["grpo", "p2o_teacher", "grpo_2k"]
    assert parallel_order(["p2o_self", "grpo"]) == ["p2o_self", "grpo"]  # no pair: longest first
    assert threads_per_job(1) >= threads_per_job(2) >= 1 and threads_per_job(10_000) == 1


@pytest.mark.slow
def test_parallel_demo_trains_methods_side_by_side_with_their_own_logs(tmp_path):
    import io

    from rich.console import Console

    from p2o.demo import run_demo
    from p2o.toy import ensure_toy_model

    model = ensure_toy_model(seed=0, output=tmp_path / "toy", preset="tiny")
    overrides = {"max_steps": 2, "per_device_train_batch_size": 24, "heldout_every_steps": 1}
    console = Console(record=True, file=io.StringIO(), width=200)
    results = run_demo(
        ["grpo_2k", "grpo", "p2o_teacher"],
        0,
        tmp_path / "demo",
        overrides={**overrides, "max_phases": 0},
        model=str(model),
        console=console,
        jobs=2,
    )
    assert list(results["methods"]) == ["grpo_2k", "grpo", "p2o_teacher"]  # the order asked for
    for name, row in results["methods"].items():
        assert row["steps"] == 2 and [p[0] for p in row["hard_acc_curve"]] == [0, 1, 2], name
        log = (tmp_path / "demo" / name / "console.log").read_text()
        assert "Loading weights" in log, name  # each process's own output, in its own file
    shown = console.export_text()
    assert all(f"{n:<15} step    2/2" in shown for n in results["methods"])
    saved = json.loads((tmp_path / "demo/results.json").read_text())
    assert saved["methods"].keys() == results["methods"].keys()


@pytest.mark.slow
def test_parallel_demo_says_a_failed_method_and_starts_no_more(tmp_path):
    import io

    from rich.console import Console

    from p2o.demo import run_parallel
    from p2o.errors import UserError

    rows = {}
    console = Console(record=True, file=io.StringIO(), width=200)
    recipe = {"task": "no-such-task", "max_steps": 2, "report_to": "none"}
    with pytest.raises(UserError, match="no-such-task"):
        run_parallel(
            ["grpo", "p2o_teacher", "grpo_2k"],
            0,
            tmp_path,
            recipe,
            {},
            str(tmp_path / "model"),
            console,
            2,
            2,
            lambda name, row: rows.update({name: row}),
        )
    shown = " ".join(console.export_text().split())
    assert "grpo failed: RegistryError: unknown task 'no-such-task'" in shown
    assert "p2o_teacher failed: RegistryError" in shown
    assert "grpo_2k not run: a method before it failed" in shown
    assert not rows and not (tmp_path / "grpo_2k").exists()
    assert "no-such-task" in (tmp_path / "grpo" / "console.log").read_text()  # the traceback is kept


def test_demo_refuses_zero_jobs(tmp_path, capsys):
    from p2o.demo import main

    with pytest.raises(SystemExit) as e:
        main(["--quick", "--jobs", "0", "--output-dir", str(tmp_path / "out")])
    assert e.value.code == 2 and "--jobs 0" in capsys.readouterr().err
