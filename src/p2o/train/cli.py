"""`p2o train --config configs/x.yaml [--flag value ...] [--resume] [--dry_run]`.

Like `trl grpo`: the YAML gives defaults, flags override them. Multi-process:
`accelerate launch --num_processes N -m p2o.train.cli --config ...`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from p2o.cliutil import report_errors
from p2o.config import P2OConfig, P2OScriptArguments


def resolve_model(script_args: P2OScriptArguments, task: Any) -> str:
    from p2o.config import ConfigError

    if script_args.model_name_or_path:
        return script_args.model_name_or_path
    if task.default_model is not None:
        return str(task.default_model())
    raise ConfigError(f"model_name_or_path: required for task {task.name!r} (a local directory or a hub id)")


def load_task(script_args: P2OScriptArguments):
    from p2o.tasks import get_task

    return get_task(script_args.task, **(script_args.task_kwargs or {}))


def load_train_samples(script_args: P2OScriptArguments, task: Any, split: str = "train"):
    from p2o.tasks.data import task_samples

    res = task_samples(
        task,
        script_args.dataset,
        split=script_args.dataset_split if script_args.dataset else split,
        config_name=script_args.dataset_config,
        problem_field=script_args.problem_field,
        answer_field=script_args.answer_field,
        id_field=script_args.id_field,
        max_samples=script_args.max_samples,
        seed=script_args.subset_seed,
        skip_bad_rows=script_args.skip_bad_rows or None,
    )
    return res


def plan(script_args: P2OScriptArguments, config: P2OConfig) -> dict[str, Any]:
    """What a run will do, resolved without loading a model."""
    phases = config.max_phases != 0
    server = config.policy_server
    if server == "auto":
        server = "vllm (server mode, weights synced)" if config.use_vllm else "transformers serve (loopback)"
    return {
        "task": script_args.task,
        "model": script_args.model_name_or_path or "(task default)",
        "dataset": script_args.dataset or "(task's own)",
        "output_dir": config.output_dir,
        "method": "P2O" if phases else "GRPO (no phases)",
        "K": config.num_generations,
        "temperature": config.temperature,
        "learning_rate": config.learning_rate,
        "max_steps": config.max_steps,
        "epochs": config.num_train_epochs,
        "phase_schedule": f"every {config.phase_every_steps} steps"
        if config.phase_every_steps
        else "end of each epoch",
        "max_phases": config.max_phases,
        "min_hard_samples": config.min_hard_samples,
        "reflection": config.reflection,
        "program": config.program,
        "meta_prompt": config.meta_prompt,
        "gepa_max_metric_calls": config.gepa_max_metric_calls,
        "policy_server": server if phases else "none",
        "generation": "vLLM" if config.use_vllm else "in-process (transformers)",
        "distill": config.distill,
        "crm": f"[{config.crm_low}, {config.crm_high}]" if config.crm else "off",
        "untemplated_rollouts": config.untemplated_rollouts,
        "same_template_in_group": config.same_template_in_group,
        "device": "cpu" if config.use_cpu else "cuda",
    }


def print_plan(p: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="p2o train: plan", show_header=False)
    for k, v in p.items():
        table.add_row(k, str(v))
    Console(stderr=True).print(table)


def run(argv: list[str]) -> int:
    from p2o.config import parse_config

    script_args, config = parse_config(argv)
    if script_args.dry_run:
        print_plan(plan(script_args, config))
        print(json.dumps(plan(script_args, config)))
        return 0

    from p2o.tasks.data import to_dataset
    from p2o.train.display import RoundDisplay
    from p2o.train.trainer import P2OTrainer

    task = load_task(script_args)
    if config.chat_template_kwargs is None and task.chat_template_kwargs:
        config.chat_template_kwargs = dict(task.chat_template_kwargs)
    loaded = load_train_samples(script_args, task)
    model = resolve_model(script_args, task)
    print(f"p2o train: {loaded.summary()}; model {model}", file=sys.stderr)
    dataset = to_dataset(task, loaded.samples)
    trainer = P2OTrainer(
        model=model,
        task=task,
        args=config,
        train_dataset=dataset,
        samples={s.sample_id: s for s in loaded.samples},
        enable_phases=config.max_phases != 0,
        callbacks=[RoundDisplay()],
    )
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if script_args.resume else None)
    seconds = time.perf_counter() - t0
    final = Path(config.output_dir) / "final"
    trainer.save_model(str(final))
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(final)
        summary = {
            "train_seconds": round(seconds, 2),
            "global_step": trainer.state.global_step,
            "rounds": trainer.rounds,
            "final_model": str(final),
        }
        (Path(config.output_dir) / "train_summary.json").write_text(
            json.dumps(summary, indent=2, default=str)
        )
        print(
            f"p2o train: done in {seconds:.1f} s, {trainer.state.global_step} steps; model in {final}",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    return report_errors("p2o train", lambda: run(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
