"""`p2o evolve --config FILE [--output-dir DIR] [--field value ...]`: one prompt-evolution phase.

The config is the same YAML `p2o train` reads (`P2OConfig` + script arguments): the model
(`model_name_or_path`, a checkpoint directory), the task, the template program, the hard samples
(`hard_samples: file.jsonl` with `sample_id` [, problem, answer] per line — or left out to mine them:
K = `num_generations` rollouts of each training sample at `temperature`, hard when at most
`hard_max_successes` succeed), the reflection model, the meta-prompt and the budget
(`gepa_max_metric_calls`). Outputs go to `output_dir` (see `p2o.evolve.phase`); running again on the
same directory resumes.

For a task that builds its own policy (`Task.default_model`, the toy world's), a `model_name_or_path`
that does not exist yet (or none) is built first (a cached build is reused).
"""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2o.cliutil import report_errors
from p2o.files import write_jsonl_atomic


@dataclass
class EvolveArguments:
    """Options of `p2o evolve` only."""

    initial_model: str | None = field(
        default=None,
        metadata={"help": "reflection=initial: the frozen initial checkpoint; default model_name_or_path."},
    )
    toy_seed: int = field(
        default=0,
        metadata={
            "help": "A task that builds its own policy (toy), not built yet: the seed to build it with."
        },
    )


def _say(msg: str) -> None:
    print(f"p2o evolve: {msg}", file=sys.stderr, flush=True)


def _model_path(script_args: Any, evolve_args: EvolveArguments, task: Any) -> str:
    path = script_args.model_name_or_path
    build = task.default_model
    # A task's builder takes what it can of: where to build (`output`) and the `seed` to build with;
    # a folder named but not there yet is built only by a builder that can build into it.
    accepted = inspect.signature(build).parameters if build is not None else {}
    if build is not None and (path is None or (not Path(path).exists() and "output" in accepted)):
        options = {"output": path, "seed": evolve_args.toy_seed}
        _say(f"building the task's policy ({path or 'cache'}; reused when already built) ...")
        return str(build(**{k: v for k, v in options.items() if k in accepted}))
    if path:
        return path
    from p2o.config import ConfigError

    raise ConfigError("model_name_or_path: required (a checkpoint directory of the policy)")


def _pool(script_args: Any, task: Any) -> list[Any] | None:
    """The samples hard ones are drawn from (the dataset, or the task's own data); None if there are none."""
    from p2o.tasks.data import task_samples

    if script_args.dataset is None and task.splits is None and not task.dataset.get("source"):
        return None
    return task_samples(
        task,
        script_args.dataset,
        split=script_args.dataset_split,
        problem_field=script_args.problem_field,
        answer_field=script_args.answer_field,
        id_field=script_args.id_field,
        max_samples=script_args.max_samples,
        seed=script_args.subset_seed,
        skip_bad_rows=script_args.skip_bad_rows,
    ).samples


def _read_hard_samples(script_args: Any, pool: list[Any] | None, out: Path) -> list[Any] | None:
    """Hard samples from the configured file, or from an earlier run's mining; None = mine them."""
    from p2o.tasks.data import read_hard_samples

    known = {s.sample_id: s for s in pool} if pool is not None else None
    if script_args.hard_samples:
        hard = read_hard_samples(script_args.hard_samples, known=known)
        _say(f"{len(hard)} hard samples from {script_args.hard_samples}")
        return hard
    mined_path = out / "hard_samples.jsonl"
    if mined_path.exists():  # resume: the phase must see the same hard samples
        hard = read_hard_samples(mined_path, known=known)
        _say(f"{len(hard)} hard samples from {mined_path} (mined by an earlier run)")
        return hard
    if pool is None:
        from p2o.tasks.data import DataError

        raise DataError(
            "nothing to mine hard samples from: give hard_samples (a JSONL file) or a dataset "
            "(the task has no built-in data)"
        )
    return None


def _mine(pool: list[Any], config: Any, task: Any, policy: Any, out: Path) -> list[Any]:
    from tqdm.auto import tqdm

    from p2o.evolve.mining import mine_hard_samples

    k = int(config.num_generations)
    _say(f"mining hard samples: {len(pool)} samples x K={k} rollouts at temperature {config.temperature}")
    template_kwargs = {**(task.chat_template_kwargs or {}), **(config.chat_template_kwargs or {})}
    with (
        policy.client(chat_template_kwargs=template_kwargs) as client,
        tqdm(total=len(pool), desc="mine", unit="sample", dynamic_ncols=True) as bar,
    ):
        hard, mined = mine_hard_samples(
            client,
            task,
            pool,
            k=k,
            temperature=config.temperature,
            max_tokens=config.max_completion_length,
            max_successes=config.hard_max_successes,
            num_threads=config.gepa_num_threads,
            on_sample=bar.update,
        )
    mined_path = out / "hard_samples.jsonl"
    rows = (
        {
            "sample_id": m.sample.sample_id,
            "problem": m.sample.problem,
            "answer": m.sample.answer,
            "successes": m.successes,
            "k": m.k,
        }
        for m in hard
    )
    write_jsonl_atomic(mined_path, rows)
    _say(
        f"{len(hard)} of {len(mined)} samples are hard (<= {config.hard_max_successes} of {k} succeed): {mined_path}"
    )
    return [m.sample for m in hard]


def run(argv: list[str]) -> int:
    from p2o.config import parse_config

    script_args, config, evolve_args = parse_config(argv, extra=(EvolveArguments,))
    if not config.output_dir or config.output_dir == "trainer_output":
        from p2o.config import ConfigError

        raise ConfigError(
            "output_dir: required for p2o evolve (--output-dir DIR or output_dir: in the config)"
        )
    out = Path(config.output_dir)

    # Everything checkable without a model is checked first: task, program, meta-prompt.
    from p2o.tasks import get_task
    from p2o.templates.meta_prompts import load_meta_prompt
    from p2o.templates.programs import load_program

    task = get_task(script_args.task, **(script_args.task_kwargs or {}))
    if config.chat_template_kwargs is None and task.chat_template_kwargs:
        config.chat_template_kwargs = dict(task.chat_template_kwargs)  # e.g. enable_thinking: false
    program = load_program(config.program)
    meta_prompt = load_meta_prompt(config.meta_prompt)
    if config.reflection.startswith("teacher:"):
        from p2o.evolve.reflection import ReflectionError, reflector_from_config

        try:
            reflector_from_config(config)  # a missing key is named here, before any model is loaded
        except ReflectionError as e:
            _say(f"error: {e}")
            return 1
    if script_args.dry_run:
        plan = {
            "task": task.name,
            "model": script_args.model_name_or_path,
            "program": f"{program.name}@{program.seed_name} ({program.source})",
            "meta_prompt": str(meta_prompt.path),
            "reflection": config.reflection,
            "chat_template_kwargs": config.chat_template_kwargs,
            "hard_samples": script_args.hard_samples or "mined",
            "budget": config.gepa_max_metric_calls,
            "output_dir": str(out),
        }
        print(json.dumps(plan, indent=2))
        return 0

    model = _model_path(script_args, evolve_args, task)
    out.mkdir(parents=True, exist_ok=True)
    pool = _pool(script_args, task)
    hard = _read_hard_samples(script_args, pool, out)
    from p2o.evolve.phase import PhaseError, run_phase
    from p2o.evolve.reflection import ReflectionError
    from p2o.policy import PolicyServerError, open_policy
    from p2o.templates.programs import ProgramError

    try:
        policy = open_policy(config, model, out)
        _say(f"starting the policy server ({type(policy).__name__}); log: {policy.log_path or '-'}")
        with policy:
            if hard is None:
                assert pool is not None
                hard = _mine(pool, config, task, policy, out)
            if not hard:
                _say("no hard samples: nothing to evolve")
                return 1
            if len(hard) < config.min_hard_samples:
                _say(
                    f"note: {len(hard)} hard samples < min_hard_samples={config.min_hard_samples} (a trainer would skip this phase)"
                )
            result = run_phase(
                config,
                task,
                hard,
                policy,
                out,
                program=program,
                initial_model=evolve_args.initial_model or model,
            )
    except (PolicyServerError, ReflectionError, PhaseError, ProgramError) as e:
        _say(f"error: {e}")
        return 1
    s = result.stats
    _say(
        f"dev solved {s['dev_solved_frac_before']:.2f} → {s['dev_solved_frac_after']:.2f} "
        f"(best single template {s['best_single']['dev_solved_frac']:.2f}); {s['candidates']} candidates, "
        f"{s['metric_calls']}/{s['budget']} metric calls, {s['reflection_calls']} reflection calls, "
        f"{sum(s['rejected'].values())} proposals rejected, {s['seconds']:.1f}s"
    )
    _say(f"wrote {out / 'templates.json'}, {out / 'assignments.json'}, {out / 'phase.json'}")
    return 0


def main(argv: list[str]) -> int:
    return report_errors("p2o evolve", lambda: run(argv))
