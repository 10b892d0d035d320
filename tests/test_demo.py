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
    assert saved["methods"]["p2o_teacher"]["rounds"][0]["status"] in ("done", "skipped")
    assert "| p2o_teacher |" in (tmp_path / "demo/results.md").read_text()
    assert (tmp_path / "demo/curves.png").stat().st_size > 1000


def test_demo_names_a_model_folder_that_holds_no_policy(tmp_path, capsys):
    from p2o.demo import main

    with pytest.raises(SystemExit) as e:
        main(["--quick", "--model", str(tmp_path / "nothing"), "--output-dir", str(tmp_path / "out")])
    assert e.value.code == 2
    assert "--model" in capsys.readouterr().err and not (tmp_path / "out").exists()
