"""`p2o rehearse [--recipe FILE ...] [--output DIR]`: the paper's recipes end to end on CPU, through
the code paths of a GPU run, with labelled stand-ins (see `p2o.rehearse.runner`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="p2o rehearse",
        description="Run the paper's recipes (unchanged except sizes) on CPU with stand-ins for the hub "
        "model, the data and the teacher endpoint; write DIR/rehearsal.json; exit 1 if anything failed.",
    )
    p.add_argument(
        "--recipe",
        action="append",
        default=None,
        help="A recipe YAML (repeat); default: every recipe in the packaged configs/paper/.",
    )
    p.add_argument("--output", "--output_dir", "--output-dir", dest="output", default="runs/rehearsal")
    p.add_argument("--steps", type=int, default=4, help="Optimizer steps per recipe (phases every 2).")
    p.add_argument(
        "--two-process",
        "--two_process",
        default="deepscaler_p2o_teacher",
        help="Recipe (by name) also run under accelerate launch with 2 processes; '' to skip.",
    )
    p.add_argument(
        "--self-run",
        "--self_run",
        default="deepscaler_p2o_self",
        help="Recipe (by name) also run with reflection: self (the live policy reflects); '' to skip.",
    )
    p.add_argument(
        "--resume",
        default="deepscaler_p2o_teacher",
        help="Recipe killed (kill -9) after its first checkpoint and resumed; '' to skip.",
    )
    p.add_argument(
        "--refused-key",
        "--refused_key",
        default="deepscaler_p2o_teacher",
        help="Teacher recipe run with a key the endpoint refuses: it must stop before step 1; '' to skip.",
    )
    return p


def paper_recipes() -> list[Path]:
    """The packaged recipes of configs/paper/ (in a checkout: the repository's own)."""
    from p2o.resources import packaged_dir

    return sorted((packaged_dir("configs") / "paper").glob("*.yaml"))


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    recipes = [Path(r) for r in args.recipe] if args.recipe else paper_recipes()
    missing = [str(r) for r in recipes if not r.is_file()]
    if missing or not recipes:
        print(
            f"p2o rehearse: error: no such recipe file: {', '.join(missing) or '(none found)'}",
            file=sys.stderr,
        )
        return 2
    from p2o.rehearse.runner import Rehearsal

    rehearsal = Rehearsal(recipes, Path(args.output), steps=args.steps)
    report = rehearsal(
        two_process=args.two_process or None,
        resume=args.resume or None,
        refused=args.refused_key or None,
        self_ref=args.self_run or None,
    )
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"p2o rehearse → {Path(args.output) / 'rehearsal.json'}")
    for col in ("recipe", "train", "phases", "reflection calls", "teacher answered", "s"):
        table.add_column(col)
    for name, e in report["recipes"].items():
        table.add_row(
            name,
            e["train"]["status"],
            " ".join(p["status"] for p in e["phases"]) or "-",
            str(sum(p.get("reflection_calls") or 0 for p in e["phases"])),
            str(e.get("teacher_answered", "-")),
            f"{e['train']['seconds']:.0f}",
        )
    for name, c in report["checks"].items():
        table.add_row(name, c["status"], "", "", "", f"{c.get('seconds', 0):.0f}")
    Console(stderr=True).print(table)
    print(
        f"p2o rehearse: {report['status']} in {report['seconds']:.0f} s"
        + (f"; failed: {', '.join(report['failed'])}" if report["failed"] else ""),
        file=sys.stderr,
    )
    return 0 if report["status"] == "done" else 1


def main(argv: list[str] | None = None) -> int:
    return run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
