"""Bad input to `p2o train` is one line on stderr naming the file, line or field, and exit code 2:
wrong YAML types, invalid YAML, a missing config, unknown tasks, undecodable or over-long rows,
duplicates. `--dry_run` checks the config, the task and a local data file without a model."""

from __future__ import annotations

import json

import pytest

from p2o.config import parse_config
from p2o.train.cli import main as train_main

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def run(capsys, *argv: str) -> tuple[int, list[str]]:
    code = train_main([*argv, "--report_to", "none"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("p2o train:")]


def one_error(capsys, *argv: str) -> str:
    code, lines = run(capsys, *argv)
    assert code == 2, lines
    assert len(lines) == 1, lines
    return lines[0]


def yaml_file(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\nreport_to: none\n{text}")
    return path


def jsonl(tmp_path, name: str, lines: list[bytes]):
    path = tmp_path / name
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return str(path)


def row(problem: str, answer: str) -> bytes:
    return json.dumps({"problem": problem, "answer": answer}).encode()


# ---------------------------------------------------------------- config types


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("learning_rate: yes", "learning_rate: must be a number, got True, a boolean"),
        ("num_generations: [6]", "num_generations: must be an integer or null, got [6], a list"),
        ("max_steps: 1.5", "max_steps: must be an integer, got 1.5, a number"),
        ("skip_bad_rows: 1", "skip_bad_rows: must be true or false, got 1, an integer"),
        ("hard_max_successes: null", "hard_max_successes: must be an integer, got None"),
        ("task_kwargs: [1, 2]", "task_kwargs: must be a mapping or a string or null, got [1, 2], a list"),
        ("label_names: [1]", "label_names: must be a list of strings or null, got [1], a list"),
    ],
)
def test_wrong_yaml_types_name_the_field(tmp_path, capsys, line, message):
    config = yaml_file(tmp_path, line + "\n")
    error = one_error(capsys, "--config", str(config), "--dry_run")
    assert error.startswith("p2o train: invalid config: ") and message in error


def test_loose_types_trl_accepts_still_pass(tmp_path):
    config = yaml_file(
        tmp_path,
        "learning_rate: 1\n"  # an int where a float belongs
        "scale_rewards: false\n"  # TRL maps booleans to names
        "dataset_config: 2024\n"  # a number where only a string belongs: its text
        "warmup_steps: 0.05\n"
        "lr_scheduler_kwargs: {min_lr: 0.0}\n"
        "task_kwargs: {seed: 1}\n"
        "crm: off\n",  # off is a YAML boolean, and a boolean belongs here
    )
    script, cfg = parse_config(["--config", str(config)])
    assert cfg.learning_rate == 1 and cfg.scale_rewards == "none" and cfg.warmup_steps == 0.05
    assert script.dataset_config == "2024" and script.task_kwargs == {"seed": 1} and cfg.crm is False


def test_invalid_yaml_names_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1.0e-6\nnum_generations: 6\n  bad: [\n")
    error = one_error(capsys, "--config", str(bad), "--dry_run")
    assert f"{bad} line 3 column 6: invalid YAML (mapping values are not allowed here)" in error


def test_missing_config_file(tmp_path, capsys):
    error = one_error(capsys, "--config", str(tmp_path / "nosuch.yaml"), "--dry_run")
    assert "nosuch.yaml" in error and "no such file" in error


# ---------------------------------------------------------------- tasks


def test_unknown_task_says_the_known_ones(capsys):
    error = one_error(capsys, "--task", "mathh", "--dry_run")
    assert error == (
        "p2o train: unknown task 'mathh'. Did you mean 'math'? Known tasks: math, toy; or give a dotted "
        "path 'pkg.mod:factory'."
    )


def test_task_module_not_found(capsys):
    error = one_error(capsys, "--task", "nosuch_pkg.tasks:make_task", "--dry_run")
    assert "'nosuch_pkg.tasks:make_task': no module named 'nosuch_pkg'" in error and "PYTHONPATH" in error


def test_task_options_the_factory_refuses(capsys):
    error = one_error(capsys, "--task", "math", "--task_kwargs", '{"timeout": 3}', "--dry_run")
    assert "invalid config: task_kwargs: task 'math' refused {'timeout': 3}" in error and "timeout_s" in error


# ---------------------------------------------------------------- data


def test_undecodable_line_is_named_and_skipped_with_the_flag(tmp_path, capsys):
    data = jsonl(
        tmp_path,
        "latin1.jsonl",
        [row("1+1?", "2"), b'{"problem": "caf\xe9 2x?", "answer": "6"}', row("2+2?", "4")],
    )
    error = one_error(capsys, "--task", "math", "--dataset", data, "--dry_run")
    assert f"p2o train: data error: {data} line 2: not valid UTF-8 (byte 0xe9 at column 17)" in error
    assert "--skip_bad_rows" in error
    code, lines = run(capsys, "--task", "math", "--dataset", data, "--skip_bad_rows", "--dry_run")
    assert code == 0
    assert f"p2o train: dry run: {data}: 2 samples from 3 rows, 1 bad rows skipped (first: line 2" in lines[0]


def test_row_errors_count_lines_from_one(tmp_path, capsys):
    data = jsonl(tmp_path, "d.jsonl", [row("1+1?", "2"), json.dumps({"problem": "3+3?"}).encode()])
    error = one_error(capsys, "--task", "math", "--dataset", data, "--dry_run")
    assert f"{data} line 2: field 'answer' is missing" in error


def test_over_long_problem_is_named_skipped_or_allowed(tmp_path, capsys):
    data = jsonl(tmp_path, "long.jsonl", [row("1+1?", "2"), row("x" * 30_000, "1")])
    error = one_error(capsys, "--task", "math", "--dataset", data, "--dry_run")
    assert (
        f"{data} line 2: field 'problem' is 30000 characters long, more than max_problem_chars=20000" in error
    )
    assert "--max_problem_chars" in error and "--skip_bad_rows" in error
    code, lines = run(capsys, "--task", "math", "--dataset", data, "--skip_bad_rows", "--dry_run")
    assert code == 0 and "1 samples from 2 rows, 1 bad rows skipped" in lines[0]
    code, lines = run(capsys, "--task", "math", "--dataset", data, "--max_problem_chars", "0", "--dry_run")
    assert code == 0 and "2 samples from 2 rows" in lines[0]
    error = one_error(capsys, "--task", "math", "--max_problem_chars", "-1", "--dry_run")
    assert "max_problem_chars: must be >= 0" in error


def test_duplicates_are_reported_and_dropped_with_the_flag(tmp_path, capsys):
    data = jsonl(tmp_path, "dups.jsonl", [row("1+1?", "2"), row("2+2?", "4"), row("1+1?", "2")])
    code, lines = run(capsys, "--task", "math", "--dataset", data, "--dry_run")
    assert code == 0
    assert lines[:2] == [
        f"p2o train: dry run: {data}: 3 samples from 3 rows, 1 duplicate rows kept",
        f"p2o train: warning: {data}: 1 rows repeat an earlier row's problem (first: line 3 repeats line 1); "
        "kept, so they weigh double; pass --drop_duplicates to drop them.",
    ]
    code, lines = run(capsys, "--task", "math", "--dataset", data, "--drop_duplicates", "--dry_run")
    assert (
        code == 0
        and lines[0] == f"p2o train: dry run: {data}: 2 samples from 3 rows, 1 duplicate rows dropped"
    )
