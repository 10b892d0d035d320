"""P2OConfig: YAML + CLI precedence, validation messages, CPU-safe defaults."""

from __future__ import annotations

import subprocess
import sys

import pytest

from p2o.config import ConfigError, P2OConfig, parse_config


@pytest.fixture
def yaml_cfg(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(
        f"output_dir: {tmp_path / 'out'}\n"
        "learning_rate: 5.0e-4\n"
        "num_generations: 6\n"
        "hard_max_successes: 2\n"
        "crm_low: 0.05\n"
        "task: toy\n"
        "report_to: none\n"
    )
    return p


def test_yaml_values_and_cli_override(yaml_cfg):
    script, cfg = parse_config(["--config", str(yaml_cfg), "--learning_rate", "1e-6", "--crm_high", "20"])
    assert cfg.learning_rate == 1e-6  # CLI beats YAML
    assert cfg.hard_max_successes == 2  # YAML beats default
    assert cfg.crm_low == 0.05
    assert cfg.crm_high == 20.0
    assert cfg.num_generations == 6
    assert script.task == "toy"


def test_paper_defaults():
    cfg = P2OConfig(output_dir="/tmp/p2o-test-defaults", report_to="none")
    assert (cfg.num_generations, cfg.temperature, cfg.beta) == (6, 0.6, 0.0)
    assert (cfg.hard_max_successes, cfg.min_hard_samples, cfg.dev_max_size) == (1, 100, 300)
    assert (cfg.crm, cfg.crm_low, cfg.crm_high, cfg.distill) == (True, 0.01, 10.0, True)
    assert cfg.gepa_reflection_minibatch_size == 3
    assert cfg.untemplated_rollouts == 0 and not cfg.same_template_in_group
    assert cfg.vllm_importance_sampling_correction is False


def test_cpu_safe_settings():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = P2OConfig(output_dir="/tmp/p2o-test-cpu", bf16=True, use_vllm=True, report_to="none")
    assert cfg.use_cpu and not cfg.bf16 and not cfg.use_vllm


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("learning_rate", "-1", "learning_rate: must be > 0"),
        ("learning_rate", "nan", "learning_rate"),
        ("hard_max_successes", "6", "hard_max_successes: must be in [0, num_generations=6)"),
        ("crm_low", "1.5", "crm_low: must be in (0, 1)"),
        ("crm_high", "0.5", "crm_high"),
        ("reflection", "gpt-4", "reflection: must be one of"),
        ("reflection", "teacher:", "reflection"),
        ("untemplated_rollouts", "6", "untemplated_rollouts"),
        ("retire_templates", "true", "retire_templates: must be false unless untemplated_rollouts >= 1"),
        ("policy_server", "ftp://x", "policy_server"),
        ("gepa_candidate_selection", "best", "gepa_candidate_selection"),
        ("num_generations", "1", "num_generations"),
        ("min_hard_samples", "0", "min_hard_samples"),
    ],
)
def test_invalid_values_name_the_field(yaml_cfg, flag, value, needle):
    with pytest.raises(ConfigError) as e:
        parse_config(["--config", str(yaml_cfg), f"--{flag}", value])
    assert needle in str(e.value)


def test_teacher_reflection_accepted(yaml_cfg):
    _, cfg = parse_config(["--config", str(yaml_cfg), "--reflection", "teacher:openai/gpt-4.1-mini"])
    assert cfg.reflection == "teacher:openai/gpt-4.1-mini"


def test_unknown_flag_is_an_error(yaml_cfg):
    with pytest.raises(ConfigError, match="--no_such_flag"):
        parse_config(["--config", str(yaml_cfg), "--no_such_flag", "1"])


def test_cli_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "p2o.cli", "--help"], capture_output=True, text=True, check=True
    )
    for name in ("train", "evolve", "eval", "demo", "toy"):
        assert name in out.stdout


def test_cli_train_bad_learning_rate(yaml_cfg):
    out = subprocess.run(
        [sys.executable, "-m", "p2o.cli", "train", "--config", str(yaml_cfg), "--learning_rate", "-1"],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "learning_rate" in out.stderr


def test_readme_documents_every_p2o_field():
    import dataclasses
    from pathlib import Path

    from trl import GRPOConfig

    from p2o.config import P2OScriptArguments

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    trl_fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    ours = [f.name for f in dataclasses.fields(P2OConfig) if f.name not in trl_fields]
    ours += [f.name for f in dataclasses.fields(P2OScriptArguments)]
    missing = [name for name in ours if f"`{name}`" not in readme]
    assert not missing, f"README's configuration reference lacks: {missing}"


def test_cli_train_refuses_an_output_dir_holding_an_earlier_run(yaml_cfg, tmp_path, capsys):
    from p2o.train.cli import main as train_main

    (tmp_path / "out" / "rounds" / "round-001").mkdir(parents=True)
    assert train_main(["--config", str(yaml_cfg)]) == 2
    err = capsys.readouterr().err
    assert "output_dir" in err and str(tmp_path / "out") in err and "--resume" in err
