"""`p2o export`: one evolved template program out of a run, as a DSPy program file.

p2o export --run DIR [--round N] [--template_id ID] --output FILE

`--run` is a phase's folder (`p2o evolve --output_dir`, holding templates.json) or a training run
(`p2o train --output_dir`, whose phases are `rounds/round-NNN/`; the last round that ran a phase
unless `--round N`). Without `--template_id` the phase's best single template is exported. The file
is the program's own DSPy `save` (JSON) with p2o's record under `metadata.p2o`; a phase saves the best
and the cover templates in `programs/`, and any other template of templates.json is saved here from
the program named in phase.json. Load it with `p2o.templates.load_evolved(FILE)`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from p2o.templates.programs import ProgramError, load_program, read_evolved_info


def phase_dir(run: str | Path, round_index: int | None = None) -> Path:
    """The phase folder of `run`: itself when it holds templates.json, else `rounds/round-NNN`."""
    run = Path(run)
    if not run.is_dir():
        raise ProgramError(f"--run {run}: no such folder")
    if round_index is None and (run / "templates.json").exists():
        return run
    rounds = run / "rounds"
    if round_index is not None:
        d = rounds / f"round-{round_index:03d}"
        if not (d / "templates.json").exists():
            have = [p.name for p in sorted(rounds.glob("round-*")) if (p / "templates.json").exists()]
            raise ProgramError(
                f"--round {round_index}: {d} holds no phase (templates.json); rounds with one: "
                f"{', '.join(have) or '(none)'}"
            )
        return d
    done = [p for p in sorted(rounds.glob("round-*")) if (p / "templates.json").exists()]
    if not done:
        raise ProgramError(
            f"--run {run}: neither a phase folder (no templates.json) nor a training run with a finished "
            "phase (no rounds/round-NNN/templates.json)"
        )
    return done[-1]


def export_program(
    run: str | Path, output: str | Path, *, round_index: int | None = None, template_id: str | None = None
) -> dict[str, Any]:
    """Write one evolved program file to `output`; returns its `metadata.p2o` record."""
    folder = phase_dir(run, round_index)
    output = Path(output)
    if output.suffix != ".json":
        raise ProgramError(f"--output {output}: a DSPy program file ends in .json")
    templates = json.loads((folder / "templates.json").read_text(encoding="utf-8"))["templates"]
    phase = json.loads((folder / "phase.json").read_text(encoding="utf-8"))
    tid = template_id or (phase.get("best_single") or {}).get("id")
    by_id = {t["id"]: t for t in templates}
    if tid not in by_id:
        raise ProgramError(
            f"--template_id {tid}: not a template of {folder / 'templates.json'}; ids: {', '.join(by_id)}"
        )
    saved = folder / "programs" / ("best.json" if template_id is None else f"{tid}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    if saved.exists():
        shutil.copyfile(saved, output)
    else:  # a template outside the cover, or a phase from before programs/ existed
        t = by_id[tid]
        spec = phase.get("program_source") or phase.get("program")
        if not spec or not (Path(spec).exists() or "/" not in str(spec)):
            spec = phase.get("program")
        if not spec:
            raise ProgramError(f"{folder / 'phase.json'} names no program to save template {tid} with")
        program = load_program(str(spec))
        program.save_evolved(
            output,
            t.get("instruction", t["text"]),
            template_id=tid,
            task=phase.get("task"),
            mean=t["mean"],
            dev_solved=t["dev_solved"],
            in_cover=t["in_cover"],
        )
    return read_evolved_info(output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2o export",
        description="Write one evolved template program of a run as a DSPy program file (JSON).",
    )
    parser.add_argument("--run", required=True, help="A phase folder (templates.json) or a training run.")
    parser.add_argument(
        "--round", dest="round_index", type=int, default=None, help="Training run: the round (default: last)."
    )
    parser.add_argument(
        "--template_id", default=None, help="Template id in templates.json (default: the best)."
    )
    parser.add_argument("--output", required=True, help="The program file to write (.json).")
    return parser


def main(argv: list[str] | None = None) -> int:
    from p2o.cliutil import parse_args

    args = parse_args(build_parser(), argv)
    try:
        info = export_program(
            args.run, args.output, round_index=args.round_index, template_id=args.template_id
        )
    except ProgramError as e:
        print(f"p2o export: error: {e}", file=sys.stderr)
        return 2
    print(
        f"p2o export: wrote {args.output} (template {info.get('template_id')}, program {info.get('program')}, "
        f"task {info.get('task')}); load it with p2o.templates.load_evolved({str(args.output)!r})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
