"""The paper's recipes in configs/: each resolves and passes `p2o train --dry-run`, with the paper's
hyper-parameters and its batch geometry; the accelerate configs load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from p2o.config import parse_config
from p2o.train.cli import main as train_main
from p2o.train.cli import plan

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs").rglob("*.yaml"))
RECIPES = [p for p in RECIPES if "accelerate" not in p.parts and not p.name.startswith("toy_")]
PAPER = sorted((REPO / "configs" / "paper").glob("*.yaml"))
ACCELERATE = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))
# On a machine without a GPU the config turns vLLM off and says so; the recipes are GPU recipes.
pytestmark = pytest.mark.filterwarnings("ignore:no CUDA GPU:UserWarning")
TRAINING_PROCESSES = 6  # the documented 8-GPU layout: 6 training GPUs, 2 for the vLLM server


def test_the_recipe_set_is_complete():
    names = {p.stem for p in PAPER}
    methods = ("grpo", "grpo_k12", "p2o_teacher", "p2o_self", "p2o_no_distill")
    assert names == {f"{d}_{m}" for d in ("deepscaler", "deepmath") for m in methods}
    assert {p.stem for p in ACCELERATE} >= {"zero3", "fsdp2", "zero3_multinode", "fsdp2_multinode"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_passes_dry_run(recipe, capsys):
    assert train_main(["--config", str(recipe), "--dry-run"]) == 0
    p = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "servers" in p and "phases" in p and "reflection_model" in p and "steps" in p


@pytest.mark.parametrize("recipe", PAPER, ids=lambda p: p.stem)
def test_recipes_carry_the_papers_settings(recipe):
    args, cfg = parse_config(["--config", str(recipe)])
    name = recipe.stem
    k = 12 if name.endswith("grpo_k12") else 6
    assert cfg.learning_rate == 1e-6 and cfg.warmup_steps == 0.05
    assert cfg.lr_scheduler_type == "constant_with_warmup"
    assert cfg.num_generations == k and cfg.temperature == 0.6
    assert cfg.max_completion_length == 12288 and cfg.beta == 0.0 and cfg.num_train_epochs == 10
    assert args.task_kwargs == {"chat_template_kwargs": {"enable_thinking": False}}
    data = "deepscaler" if name.startswith("deepscaler") else "deepmath"
    # The files `p2o data` writes.
    assert (
        args.dataset == f"data/{data}/train_5k.jsonl" and args.eval_dataset == f"data/{data}/test_500.jsonl"
    )
    assert args.id_field == "sample_id"
    # Batch geometry: 128 prompts per generation batch, 64 per optimizer step on the 6 training GPUs.
    gen = cfg.generation_batch_size
    micro = cfg.per_device_train_batch_size * TRAINING_PROCESSES
    assert gen == 128 * k and gen % micro == 0
    assert micro * cfg.gradient_accumulation_steps == 64 * k
    assert (gen // micro) % cfg.gradient_accumulation_steps == 0  # whole optimizer steps per batch
    raw = yaml.safe_load(recipe.read_text())
    assert raw["use_vllm"] is True and raw["vllm_mode"] == "server"
    p = plan(args, cfg)
    if "grpo" in name:
        assert cfg.max_phases == 0 and p["method"] == "GRPO (no phases)" and p["reflection_model"] == "none"
    else:
        assert p["method"] == "P2O" and cfg.crm and (cfg.crm_low, cfg.crm_high) == (0.01, 10.0)
        assert cfg.distill is (not name.endswith("no_distill"))
        if name.endswith("p2o_self"):
            assert cfg.reflection == "initial"
        else:
            assert cfg.reflection.startswith("teacher:") and "Kimi-K2" in cfg.reflection


def test_dry_run_counts_steps_of_a_local_dataset(tmp_path, capsys):
    data = tmp_path / "train_5k.jsonl"
    # As `p2o data` writes them: the recipe names the id column, and the dry run reads the file.
    rows = ({"sample_id": f"s{i}", "problem": f"p{i}", "answer": "1"} for i in range(5000))
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = REPO / "configs" / "paper" / "deepscaler_p2o_teacher.yaml"
    assert train_main(["--config", str(recipe), "--dry-run", "--dataset", str(data)]) == 0
    p = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # One process here: 39 generation batches of 128 prompts per epoch, 768 / 8 micro-batches each,
    # 8 per optimizer step -> 12 steps per batch.
    assert p["steps"] == "4680 (5000 rows: 468 per epoch)"
    assert p["phases"] == "end of each of 10 epochs"
    assert p["batch"].startswith("128 prompts x K per generation batch")


def test_the_p2o_command_accepts_dry_run_with_a_dash():
    recipe = REPO / "configs" / "paper" / "deepmath_p2o_self.yaml"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, "-m", "p2o.cli", "train", "--config", str(recipe), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    p = json.loads(out.stdout.strip().splitlines()[-1])
    assert p["reflection_model"] == "the frozen initial policy (Self-Ref)"
    assert "p2o train: plan" in out.stderr


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.stem)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.mixed_precision == "bf16"
    if "multinode" in path.stem:
        assert (cfg.num_machines, cfg.num_processes) == (2, 16)
    else:
        assert (cfg.num_machines, cfg.num_processes) == (1, TRAINING_PROCESSES)
    kind = "DEEPSPEED" if path.stem.startswith("zero3") else "FSDP"
    assert str(cfg.distributed_type).endswith(kind)
