"""Model options as `trl grpo` takes them (dtype, attention, revision, LoRA), through P²O: with LoRA
the templated rollouts, the loss on x and the CRM run with the adapters active, and each phase's
policy checkpoint is the merged model a server can load."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from p2o.config import ConfigError, P2OConfig, parse_config
from p2o.tasks.data import to_dataset
from p2o.train.trainer import P2OTrainer
from tests.tiny_world import TEMPLATE, build_tiny_model, tiny_samples, tiny_task


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_model_fields_parse_like_trl_grpo(tmp_path):
    args, cfg = parse_config(
        [
            "--model_name_or_path", "Qwen/Qwen3-4B", "--output_dir", str(tmp_path),
            "--dtype", "bfloat16", "--attn_implementation", "sdpa", "--model_revision", "v1",
            "--use_peft", "true", "--lora_r", "8", "--lora_target_modules", "q_proj", "v_proj",
            "--trust_remote_code", "true",
        ]
    )  # fmt: skip
    assert args.model_init_kwargs() == {"dtype": "bfloat16", "attn_implementation": "sdpa", "revision": "v1"}
    peft = args.peft_config()
    assert peft.r == 8 and set(peft.target_modules) == {"q_proj", "v_proj"} and cfg.trust_remote_code
    with pytest.raises(ConfigError, match="dtype"):
        parse_config(["--output_dir", str(tmp_path), "--dtype", "float8"])


@dataclass
class Result:
    templates: dict
    assignments: dict
    stats: dict = field(default_factory=dict)


def test_lora_training_keeps_p2o_and_serves_merged_weights(tiny_model, tmp_path):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    seen = []

    def phase(config, task, hard_samples, policy, output_dir):
        seen.append(Path(policy.checkpoint))
        return Result({"t": TEMPLATE}, {s.sample_id: ["t"] * config.num_generations for s in hard_samples})

    task = tiny_task()
    cfg = P2OConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=6, num_generations=3,
        max_completion_length=4, learning_rate=1e-2, max_steps=4, phase_every_steps=2, min_hard_samples=1, phase_after_last_step=True,
        save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
    )  # fmt: skip
    tr = P2OTrainer(
        model=str(tiny_model),
        task=task,
        args=cfg,
        train_dataset=to_dataset(task, tiny_samples()),
        phase_runner=phase,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    assert hasattr(tr.model, "peft_config")
    tr.train()
    # Templated rollouts after the first phase, their CRM computed with the adapters active.
    assert any(h.get("p2o/templated_frac", 0) > 0 for h in tr.state.log_history)
    assert any("p2o/crm_masked_frac" in h for h in tr.state.log_history)
    # The phase's checkpoint is a plain model with the adapters merged: it differs from the base
    # weights where LoRA trained, and holds no adapter files.
    ckpt = seen[-1]
    assert not (ckpt / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(ckpt)
    sd = merged.state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    changed = [k for k in sd if "q_proj" in k and not torch.equal(sd[k], base[k])]
    unchanged = [k for k in sd if "k_proj" in k and torch.equal(sd[k], base[k])]
    assert changed, "the LoRA update must be merged into the served weights"
    assert unchanged, "modules without adapters keep their weights"
    # The training model still has its adapters (merging worked on a copy).
    assert hasattr(tr.model, "peft_config") and any("lora_" in n for n, _ in tr.model.named_parameters())
    assert json.loads((Path(cfg.output_dir) / "p2o_state.json").read_text())["rounds"][0]["status"] == "done"
