"""One command-line style (`p2o.cliutil.parse_args`): `p2o eval`, `p2o data`, `p2o toy` and `p2o demo`
take `--output_dir` and `--output-dir` like `p2o train`, and read their options from `--config FILE`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from p2o.cliutil import parse_args

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def sample_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p2o sample")
    p.add_argument("--output_dir", "--output", dest="output_dir", type=Path, required=True)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--model", action="append", default=[])
    p.add_argument("--benchmarks", default="paper")
    p.add_argument("--task-kwargs", default=None)
    p.add_argument("--backend", choices=("auto", "vllm"), default="auto")
    return p


def write(tmp_path: Path, data: dict, name: str = "opts.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_every_multiword_flag_takes_underscores_and_dashes():
    for argv in (
        ["--output_dir", "o", "--max_tokens", "3", "--top_p", "0.5", "--no_progress"],
        ["--output-dir", "o", "--max-tokens", "3", "--top-p", "0.5", "--no-progress"],
        ["--output=o", "--max_tokens=3", "--top-p=0.5", "--no-progress"],
    ):
        args = parse_args(sample_parser(), argv)
        assert (args.output_dir, args.max_tokens, args.top_p, args.no_progress) == (Path("o"), 3, 0.5, True)
    parser = sample_parser()
    parse_args(parser, ["--output_dir", "o"])
    help_text = parser.format_help()
    assert "--max_tokens MAX_TOKENS, --max-tokens MAX_TOKENS" in help_text  # as `p2o train --help`
    assert "--config FILE" in help_text


def test_config_file_gives_defaults_the_command_line_overrides(tmp_path):
    cfg = write(
        tmp_path,
        {
            "output-dir": "from_file",
            "max_tokens": 16,
            "no_progress": True,
            "model": ["a", "b"],
            "benchmarks": ["aime24", "math500"],  # a list for a comma-separated flag
            "task_kwargs": {"seed": 1},  # a mapping for a JSON flag
            "backend": "vllm",
        },
    )
    args = parse_args(sample_parser(), ["--config", cfg])  # a required flag may come from the file
    assert args.output_dir == Path("from_file") and args.max_tokens == 16 and args.no_progress
    assert args.model == ["a", "b"] and args.benchmarks == "aime24,math500" and args.backend == "vllm"
    assert json.loads(args.task_kwargs) == {"seed": 1} and args.config == cfg
    args = parse_args(sample_parser(), ["--max-tokens", "4", f"--config={cfg}", "--model", "c"])
    assert args.max_tokens == 4 and args.model == ["c"]  # a repeated flag replaces the file's list
    assert args.output_dir == Path("from_file")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"output_dir": "o", "max_tokns": 3}, "unknown key 'max_tokns'. Known keys: backend, benchmarks"),
        ({"output_dir": "o", "max_tokens": "many"}, "max_tokens: invalid literal for int"),
        ({"output_dir": "o", "max_tokens": 2.5}, "max_tokens: not an integer"),
        ({"output_dir": "o", "no_progress": "yes"}, "no_progress takes true or false"),
        ({"output_dir": "o", "backend": "tpu"}, "backend must be one of auto, vllm"),
    ],
)
def test_bad_config_keys_and_values_name_the_key_and_the_file(tmp_path, capsys, data, message):
    cfg = write(tmp_path, data)
    with pytest.raises(SystemExit) as e:
        parse_args(sample_parser(), ["--config", cfg])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--config {cfg}: " in err and message in err


def test_a_missing_or_malformed_config_file_is_named(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    for file, message in (
        (tmp_path / "nope.yaml", "no such file"),
        (tmp_path / "list.yaml", "expected a mapping of option names to values, got list"),
    ):
        with pytest.raises(SystemExit):
            parse_args(sample_parser(), ["--config", str(file), "--output_dir", "o"])
        assert f"--config {file}: {message}" in capsys.readouterr().err


def test_eval_flags_and_config(tmp_path, capsys):
    from p2o.evaluation.cli import build_parser, main

    a = parse_args(build_parser(), ["--output_dir", "x", "--max_tokens", "5", "--data-dir", "d"])
    b = parse_args(build_parser(), ["--output-dir", "x", "--max-tokens", "5", "--data_dir", "d"])
    c = parse_args(build_parser(), ["--output", "x", "--max-tokens=5", "--data-dir=d"])  # the old spelling
    assert vars(a) == vars(b) == vars(c) and a.output_dir == Path("x") and a.data_dir == Path("d")
    assert main(["--config", write(tmp_path, {"list": True})]) == 0
    assert "aime24" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--config", write(tmp_path, {"benchmark": "aime24"})])
    assert "unknown key 'benchmark'" in capsys.readouterr().err


def test_data_flags_and_config(tmp_path):
    from p2o.tasks.prep import main

    cfg = write(
        tmp_path,
        {"source": str(FIXTURES / "deepscaler_mini.jsonl"), "holdout": 10, "sizes": [20, 40], "seed": 42},
    )
    assert main(["deepscaler", "--config", cfg, "--output_dir", str(tmp_path / "a")]) == 0
    assert (
        main(
            ["deepscaler", "--config", cfg, "--output-dir", str(tmp_path / "b"), "--problem-field", "problem"]
        )
        == 0
    )
    rows = {
        d: json.loads((tmp_path / d / "prep.json").read_text())["files"]["train_20"]["rows"]
        for d in ("a", "b")
    }
    assert rows == {"a": 20, "b": 20}
    assert (tmp_path / "a" / "train_20.jsonl").read_text() == (tmp_path / "b" / "train_20.jsonl").read_text()


def test_data_config_keys_are_the_subcommands(tmp_path, capsys):
    from p2o.tasks.prep import main

    cfg = write(tmp_path, {"min_difficulty": 8})  # a deepmath option
    with pytest.raises(SystemExit):
        main(["deepscaler", "--config", cfg])
    assert "unknown key 'min_difficulty'" in capsys.readouterr().err


def test_toy_flags_and_config(tmp_path, capsys):
    from p2o.toy.cli import build_parser, main

    args = parse_args(
        build_parser(), ["build", "--config", write(tmp_path, {"output_dir": "m", "no_cache": True})]
    )
    assert (args.cmd, args.output_dir, args.no_cache, args.preset) == ("build", "m", True, "default")
    args = parse_args(build_parser(), ["build", "--output-dir", "m", "--templated_success", "0.5"])
    assert (args.output_dir, args.templated_success) == ("m", 0.5)
    assert main(["world", "--config", write(tmp_path, {"seed": 1, "problems": 1})]) == 0
    assert capsys.readouterr().out.startswith("toy world, seed 1:")
    with pytest.raises(SystemExit):
        main(["report", "--config", write(tmp_path, {"path": "x"})])
    assert "'path' is a positional argument" in capsys.readouterr().err


def test_demo_flags_and_config(tmp_path, capsys):
    from p2o.demo import main

    # The file's options reach the demo: its --model check fires on the folder the file names.
    cfg = write(
        tmp_path, {"quick": True, "model": str(tmp_path / "nothing"), "output_dir": str(tmp_path / "o")}
    )
    with pytest.raises(SystemExit) as e:
        main(["--config", cfg])
    assert (
        e.value.code == 2
        and f"--model {tmp_path / 'nothing'}: no built toy policy" in capsys.readouterr().err
    )
    # A training recipe is --recipe now; given as --config its keys are refused, with the known ones.
    with pytest.raises(SystemExit):
        main(["--config", str(Path(__file__).parents[1] / "configs" / "toy_p2o.yaml")])
    err = capsys.readouterr().err
    assert "unknown key" in err and "recipe" in err
    with pytest.raises(SystemExit):
        main(["--recipe", "no_such_recipe", "--max_steps", "1"])
    assert "--recipe: recipe 'no_such_recipe': no such file" in capsys.readouterr().err
