"""`p2o demo [--quick] [--seed N] [--output_dir DIR]`: the paper's comparison in miniature on the toy world.

Every method trains the same freshly built toy policy for the same number of steps with the same
seed, from the recipe `configs/toy_p2o.yaml` (`--recipe`), and is measured the same way: greedy, without instruction, on the
toy world's held-out hard and easy problems (`p2o.evaluation`, as `p2o eval` does).

- `grpo`: plain GRPO with K rollouts (no phases);
- `grpo_2k`: plain GRPO with 2K rollouts;
- `p2o_teacher`: P²O, Teacher-Ref with the scripted `toy-teacher`;
- `p2o_self`: P²O, Self-Ref (the live policy reflects on itself);
- `p2o_no_distill`: P²O with the loss on x̃ (the paper's "w/o context distillation").

`--quick` runs `grpo` and `p2o_teacher`. Writes `results.json`, `results.md` and `curves.png`. Flags take
underscores or dashes (`--output_dir`, `--output-dir`), and `--config FILE` reads them from YAML
(`p2o.cliutil`); the training recipe is `--recipe`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

METHODS: dict[str, dict[str, Any]] = {
    "grpo": {"max_phases": 0},
    "grpo_2k": {"max_phases": 0, "k_factor": 2},
    "p2o_teacher": {"reflection": "toy-teacher"},
    "p2o_self": {"reflection": "self"},
    "p2o_no_distill": {"reflection": "toy-teacher", "distill": False},
}
QUICK = ("grpo", "p2o_teacher")
DEFAULT_RECIPE = "toy_p2o"  # a recipe name, found as `p2o.resources` says (shipped with p2o)


def load_recipe(path: Path) -> dict[str, Any]:
    import yaml

    if not path.exists():
        raise FileNotFoundError(f"demo recipe {path} not found; pass --recipe FILE")
    return yaml.safe_load(path.read_text()) or {}


def run_method(
    name: str, recipe: dict[str, Any], seed: int, out: Path, model: str, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Train one method from the recipe and measure it. Returns its row of results.json."""
    from p2o.config import P2OConfig
    from p2o.tasks import get_task
    from p2o.tasks.data import task_samples, to_dataset
    from p2o.train.trainer import P2OTrainer

    spec = dict(METHODS[name])
    k_factor = spec.pop("k_factor", 1)
    fields = {k: v for k, v in recipe.items() if k not in ("task", "task_kwargs", "model_name_or_path")}
    fields.update(overrides)
    fields.update(spec)  # a method's defining settings win over overrides (grpo never runs a phase)
    fields["seed"] = seed
    fields["output_dir"] = str(out / name)
    fields.setdefault("heldout_eval", "test_hard,test_easy")
    fields.setdefault("report_to", "none")
    if k_factor != 1:  # same prompts per step, twice the rollouts
        fields["num_generations"] = fields.get("num_generations", 6) * k_factor
        fields["per_device_train_batch_size"] = fields.get("per_device_train_batch_size", 6) * k_factor
    config = P2OConfig(**fields)
    if (out / name).exists():  # every demo run starts fresh: old rounds would be taken for a resume
        shutil.rmtree(out / name)
    task = get_task(recipe.get("task", "toy"), **{**(recipe.get("task_kwargs") or {}), "seed": seed})
    samples = task_samples(task, split="train").samples
    trainer = P2OTrainer(
        model=model,
        task=task,
        args=config,
        train_dataset=to_dataset(task, samples),
        samples={s.sample_id: s for s in samples},
        enable_phases=config.max_phases != 0,
    )
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    curve = trainer.heldout.curve if trainer.heldout else []
    last = curve[-1] if curve else {}
    zero_std = [h["frac_reward_zero_std"] for h in trainer.state.log_history if "frac_reward_zero_std" in h]
    metric_calls = sum(int(r.get("phase", {}).get("metric_calls", 0)) for r in trainer.rounds)
    phase_seconds = sum(float(r.get("seconds", 0)) for r in trainer.rounds)
    if trainer._policy_server is not None:
        trainer._policy_server.stop()
    return {
        "hard_acc": last.get("test_hard"),
        "easy_acc": last.get("test_easy"),
        "hard_acc_curve": [[p["step"], p["test_hard"]] for p in curve],
        "easy_acc_curve": [[p["step"], p["test_easy"]] for p in curve],
        "zero_std_frac": sum(zero_std) / len(zero_std) if zero_std else None,
        "train_seconds": round(seconds - sum(p.get("seconds", 0) for p in curve), 2),
        "phase_seconds": round(phase_seconds, 2),
        "gepa_metric_calls": metric_calls,
        "rounds": [
            {k: r.get(k) for k in ("round", "global_step", "status", "n_hard", "n_assigned")}
            for r in trainer.rounds
        ],
        "steps": trainer.state.global_step,
    }


def results_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Toy world, seed {results['seed']}, {results['steps']} steps each; accuracies greedy, no instruction, held out.",
        "",
        "| method | hard acc | easy acc | zero-std groups | train s | GEPA metric calls |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["methods"].items():
        zs = "—" if r["zero_std_frac"] is None else f"{r['zero_std_frac']:.2f}"
        lines.append(
            f"| {name} | {r['hard_acc']:.3f} | {r['easy_acc']:.3f} | {zs} | {r['train_seconds']:.0f} | "
            f"{r['gepa_metric_calls']} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, r in results["methods"].items():
        pts = r["hard_acc_curve"]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out hard accuracy (greedy, no instruction)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"P²O vs GRPO on the toy world (seed {results['seed']})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_demo(
    methods: list[str],
    seed: int,
    out: Path,
    recipe_path: Path | None = None,
    overrides: dict | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    from rich.console import Console

    console = Console(stderr=True)
    if recipe_path is None:
        from p2o.resources import find_recipe

        recipe_path = find_recipe(DEFAULT_RECIPE)
    recipe = load_recipe(recipe_path)
    out.mkdir(parents=True, exist_ok=True)
    from p2o.toy import ensure_toy_model

    t0 = time.perf_counter()
    model = model or str(ensure_toy_model(seed=seed))
    console.print(
        f"[bold]p2o demo[/]: toy model (seed {seed}) ready in {time.perf_counter() - t0:.1f} s: {model}"
    )
    results: dict[str, Any] = {"seed": seed, "recipe": str(recipe_path), "model": model, "methods": {}}
    for i, name in enumerate(methods, 1):
        console.rule(f"[{i}/{len(methods)}] {name}")
        results["methods"][name] = run_method(name, recipe, seed, out, model, overrides or {})
        r = results["methods"][name]
        console.print(
            f"{name}: hard {r['hard_acc']:.3f}  easy {r['easy_acc']:.3f}  {r['train_seconds']:.0f} s"
        )
        results["steps"] = r["steps"]
        (out / "results.json").write_text(
            json.dumps(results, indent=2)
        )  # after each method: a crash keeps them
    results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    md = results_markdown(results)
    (out / "results.md").write_text(md)
    plot_curves(results, out / "curves.png")
    console.print(md)
    console.print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'curves.png'}")
    return results


def main(argv: list[str] | None = None) -> int:
    from p2o.cliutil import parse_args, report_errors
    from p2o.resources import ResourceError, find_recipe

    p = argparse.ArgumentParser(prog="p2o demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="run grpo and p2o_teacher only")
    p.add_argument("--methods", help="comma-separated subset of: " + ", ".join(METHODS))
    p.add_argument("--seed", type=int, default=0, help="toy world and training seed (default 0)")
    p.add_argument("--output_dir", default="runs/demo", help="where results go (default runs/demo)")
    p.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        help="training recipe: a YAML file or a recipe name (default toy_p2o, i.e. configs/toy_p2o.yaml)",
    )
    p.add_argument("--max_steps", type=int, help="override the recipe's max_steps (smoke runs)")
    p.add_argument("--model", help="a built toy policy directory (default: build or reuse the cached one)")
    args = parse_args(p, argv)
    methods = list(QUICK) if args.quick else list(METHODS)
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        bad = [m for m in methods if m not in METHODS]
        if bad:
            p.error(f"--methods: unknown {', '.join(bad)}; choose from {', '.join(METHODS)}")
    if args.model and not (Path(args.model) / "config.json").is_file():
        p.error(
            f"--model {args.model}: no built toy policy there (make one with p2o toy build --output_dir DIR)"
        )
    try:
        recipe = find_recipe(args.recipe)
    except ResourceError as e:
        p.error(f"--recipe: {e}")
    overrides = {"max_steps": args.max_steps} if args.max_steps else {}

    def demo() -> int:
        run_demo(methods, args.seed, Path(args.output_dir), recipe, overrides, args.model)
        return 0

    return report_errors("p2o demo", demo)


if __name__ == "__main__":
    sys.exit(main())
