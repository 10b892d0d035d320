"""`p2o toy`: build the toy policy, show a world, print a build's report.

p2o toy build --output_dir DIR [--seed N] [--force] [--preset default|tiny] [--steps N] [--max_steps N] [--restarts N] [--no_cache]
p2o toy world [--seed N] [--problems N]
p2o toy report DIR
p2o toy rules --model DIR [--seed N] [--n_test N]

Flags take underscores or dashes (`--output_dir`, `--output-dir`; `--output` also works), and
`--config FILE` reads a subcommand's options from YAML (`p2o.cliutil`).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPORT_KEYS = (
    "params",
    "build_seconds",
    "train_seconds",
    "pretrain_steps",
    "attempts",
    "instructed_acc",
    "instructed_hard_acc",
    "easy_acc",
    "hard_acc",
    "hard_acc_by_operator",
    "hard_vague_acc",
    "hard_group_success_frac",
    "hard_rollout_success",
    "easy_rollout_success",
    "templated_rollout_success",
    "templated_group_all_success_frac",
    "templated_group_mixed_frac",
    "crm_ratio_below_0.01",
    "crm_ratio_above_10",
    "crm_ratio_median",
    "crm_digit_ratio_median",
    "hard_gold_digit_prob_mean",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2o toy", description="The toy world: a tiny local policy and task."
    )
    sub = parser.add_subparsers(dest="cmd", metavar="<command>", required=True)

    b = sub.add_parser(
        "build", help="Build and pre-train the toy policy (cached per seed), write report.json."
    )
    b.add_argument(
        "--output_dir",
        "--output",
        dest="output_dir",
        required=True,
        help="Directory for the model, tokenizer and report.json.",
    )
    b.add_argument("--seed", type=int, default=0, help="World seed: which rules the hard operators hide.")
    b.add_argument("--force", action="store_true", help="Rebuild even if a matching build exists.")
    b.add_argument(
        "--preset", default="default", help="Build settings preset: default, or tiny (seconds, tests)."
    )
    b.add_argument(
        "--steps", type=int, default=None, help="Override the number of planned pre-training steps (1000)."
    )
    b.add_argument(
        "--max_steps",
        type=int,
        default=None,
        help="Train on past --steps until learned, up to this many steps in all (default 2000).",
    )
    b.add_argument(
        "--restarts",
        type=int,
        default=None,
        help="Start over from a fresh initialisation up to this many times when the check after --steps "
        "reads below 0.995 (not learned) or the hard operators leak (default 4; 0: never).",
    )
    b.add_argument(
        "--templated-success",
        type=float,
        default=None,
        help="Calibrate so that one T=0.6 rollout from the right instruction succeeds this often (default 0.7).",
    )
    b.add_argument(
        "--hard-as-unknown",
        "--hard_as_unknown",
        dest="hard_as_unknown",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Pre-train hard operators without an instruction too, on random digits like unknown ones "
        "(on by default; --no-hard-as-unknown builds as before it was: docs/toy.md, "
        '"Hard operators seen without an instruction, by default").',
    )
    b.add_argument(
        "--sign-share",
        "--sign_share",
        dest="sign_share",
        type=float,
        default=None,
        help="Share of pre-training examples that ask for the operator symbol itself, so the policy "
        'tells every symbol apart (docs/toy.md, "Telling the hard symbols apart").',
    )
    b.add_argument(
        "--threads",
        type=int,
        default=None,
        help="Torch CPU threads (default: 2 when the CPU is idle enough for both, else 1).",
    )
    b.add_argument(
        "--attempts-at-once",
        "--attempts_at_once",
        dest="attempts_at_once",
        type=int,
        default=None,
        help="Attempts trained side by side, each in its own process on one thread (default 0: one per "
        "thread; 1: one after another, each on every thread). The build kept is the same either way.",
    )
    b.add_argument("--no-cache", action="store_true", help="Neither read nor fill the shared cache.")
    b.add_argument("--quiet", action="store_true", help="No progress bar.")

    w = sub.add_parser("world", help="Show a seed's world: operators, roles, rules, sample problems.")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--problems", type=int, default=3, help="Sample problems per operator.")

    r = sub.add_parser("report", help="Print the figures of a build directory's report.json.")
    r.add_argument("path", help="A directory written by `p2o toy build`.")

    q = sub.add_parser(
        "rules",
        help="Which rule a policy's greedy answers follow, operator by operator (held-out problems).",
    )
    q.add_argument("--model", required=True, help="A policy directory (a toy build or a trained final/).")
    q.add_argument("--seed", type=int, default=0, help="The world the policy lives in.")
    q.add_argument("--n_test", type=int, default=600, help="Held-out problems per kind (hard, easy).")
    q.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    return parser


def _rules(args: argparse.Namespace) -> int:
    from p2o.toy.answers import RULE_ORDER, answer_rules

    if not (Path(args.model) / "config.json").is_file():
        print(f"p2o toy rules: --model {args.model}: no policy there (config.json missing)", file=sys.stderr)
        return 2
    table = answer_rules(args.model, args.seed, args.n_test)
    if args.json:
        print(json.dumps(table, indent=2, ensure_ascii=False))
        return 0
    print(f"{'operator':24s} " + " ".join(f"{r:>7s}" for r in RULE_ORDER))
    for label, fracs in table.items():
        print(f"{label:24s} " + " ".join(f"{fracs.get(r, 0.0):7.3f}" for r in RULE_ORDER))
    return 0


def _print_report(report: dict, path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"toy policy, seed {report.get('seed')}: {path}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key in (k for k in REPORT_KEYS if k in report):
        v = report[key]
        # A dict figure (per operator) gives one row per entry.
        rows = {f"{key} {name}": x for name, x in v.items()} if isinstance(v, dict) else {key: v}
        for name, x in rows.items():
            table.add_row(name, f"{x:.4g}" if isinstance(x, float) else str(x))
    Console().print(table)


def _build(args: argparse.Namespace) -> int:
    from p2o.toy.build import ToyBuildError, build_toy_model, check_learned, settings_from

    overrides = {}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.restarts is not None:
        overrides["restarts"] = args.restarts
    if args.templated_success is not None:
        overrides["templated_success"] = args.templated_success
    if args.threads is not None:
        overrides["threads"] = args.threads
    # One attempt per thread unless told: the command line is the guarded entry point that the
    # spawned attempt processes need (BuildSettings.attempts_at_once).
    overrides["attempts_at_once"] = 0 if args.attempts_at_once is None else args.attempts_at_once
    if args.hard_as_unknown is not None:
        overrides["hard_as_unknown"] = args.hard_as_unknown
    if args.sign_share is not None:
        overrides["sign_share"] = args.sign_share
    try:
        settings = settings_from(args.preset, **overrides)
        result = build_toy_model(
            args.output_dir,
            seed=args.seed,
            settings=settings,
            force=args.force,
            progress=not args.quiet,
            use_cache=not args.no_cache,
        )
    except ValueError as e:
        print(f"p2o toy build: {e}", file=sys.stderr)
        return 2
    state = "reused" if result.reused else "built"
    print(f"{state} toy policy (seed {args.seed}) in {result.path}")
    _print_report(result.report, result.path)
    try:
        check_learned(result, args.seed, settings)
    except ToyBuildError as e:
        print(f"p2o toy build: {e}", file=sys.stderr)
        return 1
    return 0


def _world(args: argparse.Namespace) -> int:
    from p2o.toy import world as W

    world = W.make_world(args.seed)
    rng = random.Random(0)
    print(f"toy world, seed {args.seed}: {world.digits}-digit operands")
    for kind, ops in (("easy", world.easy), ("familiar", world.familiar), ("hard", world.hard)):
        for op, rule in ops.items():
            examples = [world.problem(rng, op) for _ in range(args.problems)]
            shown = ", ".join(f"{p} = {world.answer(p)}" for p in examples)
            print(f"  {kind:8s} {op}  {rule:8s} ({W.RULES[rule].summary}): {shown}")
    print(f"  unknown  {' '.join(world.unknown)}  (random answers, no instruction)")
    print("instructions (one paraphrase per rule):")
    for name, rule in W.RULES.items():
        print(f"  {name:8s} {rule.paraphrases[0]}")
    return 0


def _report(args: argparse.Namespace) -> int:
    path = Path(args.path)
    f = path / "report.json"
    if not f.is_file():
        print(
            f"p2o toy report: {f} does not exist; run `p2o toy build --output_dir {path}` first",
            file=sys.stderr,
        )
        return 2
    _print_report(json.loads(f.read_text()), path)
    return 0


def main(argv: list[str] | None = None) -> int:
    from p2o.cliutil import parse_args

    args = parse_args(build_parser(), argv)
    return {"build": _build, "world": _world, "report": _report, "rules": _rules}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
