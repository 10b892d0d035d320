"""`p2o train --config configs/x.yaml [--flag value ...] [--resume] [--dry_run]`.

Like `trl grpo`: the YAML gives defaults, flags override them. Multi-process:
`accelerate launch --num_processes N -m p2o.train.cli --config ...`.
"""

from __future__ import annotations

import json
import math
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
    from p2o.config import ConfigError
    from p2o.tasks import get_task
    from p2o.tasks.registry import RegistryError

    try:
        return get_task(script_args.task, **(script_args.task_kwargs or {}))
    except RegistryError:
        raise
    except (TypeError, ValueError) as e:  # the factory refused the options given
        raise ConfigError(
            f"task_kwargs: task {script_args.task!r} refused {script_args.task_kwargs}: {e}"
        ) from e


def data_options(script_args: P2OScriptArguments) -> dict[str, Any]:
    """The loading options every dataset of a run shares (None: the task's default)."""
    return {
        "problem_field": script_args.problem_field,
        "answer_field": script_args.answer_field,
        "id_field": script_args.id_field,
        "skip_bad_rows": script_args.skip_bad_rows or None,
        "drop_duplicates": script_args.drop_duplicates or None,
        "max_problem_chars": script_args.max_problem_chars,
    }


def load_train_samples(script_args: P2OScriptArguments, task: Any, split: str = "train"):
    from p2o.tasks.data import task_samples

    res = task_samples(
        task,
        script_args.dataset,
        split=script_args.dataset_split if script_args.dataset else split,
        config_name=script_args.dataset_config,
        max_samples=script_args.max_samples,
        seed=script_args.subset_seed,
        **data_options(script_args),
    )
    return res


def report_loaded(loaded: Any, what: str = "") -> None:
    print(f"p2o train: {what}{loaded.summary()}", file=sys.stderr)
    for note in loaded.notes:
        print(f"p2o train: warning: {note}", file=sys.stderr)


def _count_rows(script_args: P2OScriptArguments) -> int | None:
    """Rows of a local training file, counted without parsing it (None for hub ids and task data)."""
    rows = None
    path = Path(script_args.dataset or "")
    if script_args.dataset and path.is_file():
        if path.suffix == ".jsonl":
            with path.open("rb") as f:
                rows = sum(1 for line in f if line.strip())
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.ParquetFile(path).metadata.num_rows
    if script_args.max_samples is not None:
        rows = script_args.max_samples if rows is None else min(rows, script_args.max_samples)
    return rows


def _policy_server(config: P2OConfig) -> str:
    if config.policy_server == "trainer":
        return "none: the training model generates in process (policy_server: trainer)"
    if config.policy_server == "auto":
        return "vllm (server mode, weights synced)" if config.use_vllm else "transformers serve (loopback)"
    return config.policy_server


def _steps(script_args: P2OScriptArguments, config: P2OConfig, gen_prompts: int) -> str:
    """How many optimizer steps: max_steps, or counted from a local file's rows, or the epochs."""
    steps_per_gen = config.steps_per_generation // config.gradient_accumulation_steps
    rows = _count_rows(script_args)
    if config.max_steps > 0:
        return f"{config.max_steps} (max_steps)"
    if rows is not None:
        per_epoch = rows // gen_prompts * steps_per_gen
        return f"{per_epoch * math.ceil(config.num_train_epochs)} ({rows} rows: {per_epoch} per epoch)"
    return f"{config.num_train_epochs:g} epochs (dataset not counted)"


def _phase_count(config: P2OConfig, phases: bool) -> str:
    if not phases:
        return "none"
    if config.phase_every_steps:
        n_phases = f"every {config.phase_every_steps} steps"
    else:
        n_phases = f"end of each of {math.ceil(config.num_train_epochs)} epochs"
    if config.max_phases is not None:
        n_phases += f", at most {config.max_phases}"
    return n_phases


def _servers(config: P2OConfig, phases: bool, server: str, vllm_url: str) -> list[str]:
    """The servers the run needs, and who starts each."""
    servers = []
    if config.use_vllm and config.vllm_mode == "server":
        servers.append(f"vLLM at {vllm_url}: start it first (trl vllm-serve --model <model>)")
    if phases and not str(server).startswith(("vllm", "none")):
        servers.append(f"policy server for phases: {server}, launched by p2o")
    if phases and config.reflection == "initial":
        servers.append("initial policy (reflection): transformers serve, launched by p2o for each phase")
    return servers


def _reflection_model(config: P2OConfig) -> str:
    if config.reflection.startswith("teacher:"):
        return f"{config.reflection[8:]} via LiteLLM (Teacher-Ref; key from the environment)"
    return {"initial": "the frozen initial policy (Self-Ref)", "self": "the live policy"}.get(
        config.reflection, config.reflection
    )


def plan(script_args: P2OScriptArguments, config: P2OConfig) -> dict[str, Any]:
    """What a run will do, resolved without loading a model."""
    from p2o.policy import vllm_server_url

    phases = config.max_phases != 0
    server = _policy_server(config)
    vllm_url = vllm_server_url(config)
    k = config.num_generations
    world = config.world_size
    gen_prompts = config.generation_batch_size // k
    step_prompts = config.per_device_train_batch_size * world * config.gradient_accumulation_steps / k
    out = {
        "task": script_args.task,
        "model": script_args.model_name_or_path or "(task default)",
        "dataset": script_args.dataset or "(task's own)",
        "output_dir": config.output_dir,
        "method": "P2O" if phases else "GRPO (no phases)",
        "K": k,
        "temperature": config.temperature,
        "learning_rate": config.learning_rate,
        "max_steps": config.max_steps,
        "epochs": config.num_train_epochs,
        "world_size": world,
        "batch": f"{gen_prompts} prompts x K per generation batch; {step_prompts:.3g} prompts per optimizer step "
        f"({config.per_device_train_batch_size} x {world} processes x {config.gradient_accumulation_steps} "
        "accumulation)",
        "steps": _steps(script_args, config, gen_prompts),
        "phase_schedule": f"every {config.phase_every_steps} steps"
        if config.phase_every_steps
        else "end of each epoch",
        "phases": _phase_count(config, phases),
        "max_phases": config.max_phases,
        "min_hard_samples": config.min_hard_samples,
        "reflection": config.reflection,
        "reflection_model": _reflection_model(config) if phases else "none",
        "program": config.program,
        "meta_prompt": config.meta_prompt,
        "gepa_max_metric_calls": config.gepa_max_metric_calls,
        "policy_server": server if phases else "none",
        "servers": _servers(config, phases, server, vllm_url) or ["none"],
        "generation": "vLLM" if config.use_vllm else "in-process (transformers)",
        "distill": config.distill,
        "crm": f"[{config.crm_low}, {config.crm_high}]" if config.crm else "off",
        "untemplated_rollouts": config.untemplated_rollouts,
        "same_template_in_group": config.same_template_in_group,
        "device": "cpu" if config.use_cpu else "cuda",
    }
    if config.use_cpu and config.vllm_mode == "server":
        out["note"] = (
            f"no CUDA GPU here, so vLLM is off; on a GPU node this recipe generates on the vLLM server at "
            f"{vllm_url}, which the GEPA phases also query"
        )
    return out


def print_plan(p: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="p2o train: plan", show_header=False)
    for k, v in p.items():
        table.add_row(k, str(v))
    Console(stderr=True).print(table)


def run(argv: list[str]) -> int:
    from p2o.config import ConfigError, parse_config

    script_args, config = parse_config(argv)
    if script_args.dry_run:
        # What can be checked without a model is: the task, and a local data file.
        task = load_task(script_args)
        for source in (script_args.dataset, script_args.eval_dataset):
            if source and Path(source).expanduser().is_file():
                from p2o.tasks.data import task_samples

                report_loaded(task_samples(task, source, **data_options(script_args)), "dry run: ")
        p = plan(script_args, config)
        print_plan(p)
        print(json.dumps(p))
        return 0

    from p2o.tasks.data import to_dataset
    from p2o.train.display import RoundDisplay
    from p2o.train.trainer import STATE_FILE, P2OTrainer

    out = Path(config.output_dir)
    if not script_args.resume and ((out / STATE_FILE).exists() or (out / "rounds").exists()):
        # A fresh run there would mix its rounds with the old ones (and each phase would refuse).
        raise ConfigError(
            f"output_dir: {out} holds an earlier run (rounds/, {STATE_FILE}); pass --resume to continue "
            "it, or choose another --output_dir"
        )
    if script_args.resume:
        from p2o.train.resume import holds_a_run

        if not holds_a_run(out):
            what = "does not exist" if not out.exists() else "holds no checkpoint and no p2o run"
            raise ConfigError(
                f"--resume: {out} {what}: nothing to resume. Check --output_dir, or drop --resume to start "
                "a fresh run there"
            )
        finished = finished_run(out, config)
        if finished is not None:
            return finished
    task = load_task(script_args)
    if config.chat_template_kwargs is None and task.chat_template_kwargs:
        config.chat_template_kwargs = dict(task.chat_template_kwargs)
    loaded = load_train_samples(script_args, task)
    model = resolve_model(script_args, task)
    report_loaded(loaded)
    print(f"p2o train: model {model}", file=sys.stderr)
    dataset = to_dataset(task, loaded.samples)
    eval_dataset = None
    if script_args.eval_dataset:
        # TRL's evaluation: rollouts and rewards on held-out prompts at each eval step (eval_strategy).
        from p2o.tasks.data import task_samples

        held = task_samples(task, script_args.eval_dataset, **data_options(script_args))
        report_loaded(held, "eval ")
        eval_dataset = to_dataset(task, held.samples)
    # Model options as `trl grpo` takes them: dtype, attention, revision (TRL loads the model with
    # model_init_kwargs) and LoRA (TRL wraps the model with the PEFT config).
    if script_args.model_init_kwargs():
        config.model_init_kwargs = {**(config.model_init_kwargs or {}), **script_args.model_init_kwargs()}
    trainer = P2OTrainer(
        model=model,
        task=task,
        args=config,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        samples={s.sample_id: s for s in loaded.samples},
        enable_phases=config.max_phases != 0,
        callbacks=[RoundDisplay()],
        peft_config=script_args.peft_config(),
    )
    from p2o.train.trainer import PhaseFatalError

    t0 = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=True if script_args.resume else None)
    except PhaseFatalError as e:
        if trainer.accelerator.is_main_process:
            write_summary(trainer, time.perf_counter() - t0, None, stopped=str(e))
            print(f"p2o train: stopped at step {trainer.state.global_step}: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    final = Path(config.output_dir) / "final"
    trainer.save_model(str(final / "adapter") if script_args.use_peft else str(final))
    code = 0
    if trainer.accelerator.is_main_process:
        if script_args.use_peft:  # final/: the merged model (p2o eval, vllm serve); final/adapter/ beside it
            trainer.merged_policy().save_pretrained(final, safe_serialization=True)
        trainer.processing_class.save_pretrained(final)
        summary = write_summary(trainer, seconds, final)
        print(
            f"p2o train: done in {seconds:.1f} s, {trainer.state.global_step} steps; model in {final}",
            file=sys.stderr,
        )
        code = report_phases(summary["phases"], config)
    return code


def finished_run(out: Path, config: P2OConfig) -> int | None:
    """`--resume` on a run that already finished: say so, repeat its phase report and return the exit
    status (None: there is training left to do)."""
    path = out / "train_summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("status") != "done":
        return None
    step = int(summary.get("global_step") or 0)
    if config.max_steps > 0 and config.max_steps > step:
        return None  # a longer run asked for: training goes on from the last checkpoint
    print(
        f"p2o train: {out} holds a finished run ({step} steps, model in {summary.get('final_model')}; "
        f"{path}); nothing to resume. Raise --max_steps to train further, or choose another --output_dir.",
        file=sys.stderr,
    )
    return report_phases(summary.get("phases") or phase_totals(summary.get("rounds") or []), config)


def phase_totals(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds by status and what the phases cost, summed."""
    by = {k: [r for r in rounds if r.get("status") == k] for k in ("done", "failed", "skipped")}
    costs = [r.get("cost") or {} for r in rounds]
    usd = [c.get("reflection_usd") for c in costs if c]
    return {
        "done": len(by["done"]),
        "failed": len(by["failed"]),
        "skipped": len(by["skipped"]),
        "failed_rounds": [
            {"round": r["round"], "step": r.get("global_step"), "error": r.get("error")} for r in by["failed"]
        ],
        "cost": {
            "policy_tokens": sum(int(c.get("policy_tokens", 0)) for c in costs),
            "reflection_tokens": sum(int(c.get("reflection_tokens", 0)) for c in costs),
            "reflection_usd": round(sum(usd), 6) if usd and all(u is not None for u in usd) else None,
            "phase_seconds": round(
                sum(float(r.get("seconds", 0)) for r in rounds if r.get("status") != "skipped"), 3
            ),
        },
    }


def write_summary(
    trainer: Any, seconds: float, final: Path | None, stopped: str | None = None
) -> dict[str, Any]:
    summary = {
        "status": "stopped" if stopped else "done",
        "stopped": stopped,
        "train_seconds": round(seconds, 2),
        "global_step": trainer.state.global_step,
        "world_size": trainer.accelerator.num_processes,
        "phases": phase_totals(trainer.rounds),
        "rounds": trainer.rounds,
        "timings": trainer.timings(),
        "final_model": str(final) if final else None,
    }
    from p2o.files import write_json_atomic

    write_json_atomic(Path(trainer.args.output_dir) / "train_summary.json", summary)
    return summary


def phase_shortfall(phases: dict[str, Any], config: P2OConfig) -> str | None:
    """Why a run's phases fell short of `min_phase_success` (`phase_totals`), or None when they did not."""
    attempted = phases["done"] + phases["failed"]
    if config.max_phases == 0 or attempted == 0 or phases["done"] / attempted >= config.min_phase_success:
        return None
    return (
        f"{phases['done']} of {attempted} phases finished, fewer than min_phase_success="
        f"{config.min_phase_success:g}: this run did not do what P²O does"
    )


def report_phases(phases: dict[str, Any], config: P2OConfig) -> int:
    """The run's last lines about its phases; 1 when too few of those attempted finished."""
    if config.max_phases == 0:
        return 0
    attempted = phases["done"] + phases["failed"]
    cost = phases["cost"]
    usd = "unknown" if cost["reflection_usd"] is None else f"${cost['reflection_usd']:.4f}"
    print(
        f"p2o train: phases: {phases['done']} done, {phases['failed']} failed, {phases['skipped']} skipped; "
        f"cost: {cost['policy_tokens']} policy tokens, {cost['reflection_tokens']} reflection tokens "
        f"({usd}), {cost['phase_seconds']:.1f} s",
        file=sys.stderr,
    )
    for r in phases["failed_rounds"]:
        print(f"p2o train: round {r['round']} (step {r['step']}) failed: {r['error']}", file=sys.stderr)
    if attempted == 0:
        if phases["skipped"]:
            print(
                f"p2o train: no phase ran: every round was skipped (fewer hard samples than min_hard_samples="
                f"{config.min_hard_samples})",
                file=sys.stderr,
            )
        return 0
    shortfall = phase_shortfall(phases, config)
    if shortfall:
        print(f"p2o train: error: {shortfall}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return report_errors("p2o train", lambda: run(list(sys.argv[1:] if argv is None else argv)))
    finally:
        if "p2o.train.trainer" in sys.modules:  # a process group exists only once the trainer was built
            from p2o.train.trainer import release_process_group

            release_process_group()


if __name__ == "__main__":
    sys.exit(main())
