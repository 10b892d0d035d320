"""The `p2o` command: a thin dispatcher to each stage's own `main(argv)`.

Each subcommand lives in the module that does the work (`p2o.train.cli`, `p2o.evolve.cli`, ...) and is
imported only when called, so `p2o --help` is instant and one stage's heavy imports never slow
another's. Plug-ins add commands of their own (`p2o.plugins.register_command`; the toy world's
`p2o toy` and `p2o demo`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with `main(argv) -> int`, one-line help); `commands()` adds the plug-ins'.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "p2o.train.cli",
        "Train a policy with P²O (or plain GRPO): GRPO + GEPA phases + context distillation.",
    ),
    "evolve": (
        "p2o.evolve.cli",
        "Run one prompt-evolution phase: evolve templates for hard samples with GEPA.",
    ),
    "export": (
        "p2o.templates.export",
        "Write one evolved template program of a run as a DSPy program file (JSON) to load and call.",
    ),
    "eval": ("p2o.evaluation.cli", "Evaluate checkpoints (and templates) on benchmarks: avg@n, pass@k."),
    "data": (
        "p2o.tasks.prep",
        "Prepare training / held-out subsets (DeepScaleR, DeepMath) from a hub id or file.",
    ),
    "rehearse": (
        "p2o.rehearse.cli",
        "Rehearse the paper's recipes end to end on CPU with stand-ins (hub model, data, teacher).",
    ),
}


def commands() -> dict[str, tuple[str, str]]:
    from p2o.plugins import plugin_commands

    return {**COMMANDS, **{k: v for k, v in plugin_commands().items() if k not in COMMANDS}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2o",
        description="P²O: joint policy and prompt optimization for RL with verifiable rewards.",
        epilog="Run `p2o <command> --help` for a command's options.",
    )
    from p2o import __version__

    parser.add_argument("--version", action="version", version=f"p2o {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (_, help_text) in commands().items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known = commands()
    if not argv or argv[0] not in known:
        parser.parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module_name, _ = known[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            print(f"p2o {name}: not built yet (module {module_name} does not exist).", file=sys.stderr)
            return 3
        raise
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
