"""Shared pieces of the subcommands: one flag style, options from a YAML file, and turning a bad config
or bad data into one clear line.

`parse_args(parser, argv)` gives `p2o eval`, `p2o data`, `p2o toy` and `p2o demo` the command-line
style of `p2o train` (TRL's parser):

- every multi-word flag is accepted with underscores and with dashes: `--output_dir` and
  `--output-dir` (help shows the underscore form first, as `p2o train --help` does);
- `--config FILE` reads options from a YAML mapping whose keys are the flags' names (`output_dir:
  runs/x`, `quick: true`, dashes or underscores); flags on the command line override the file. A list
  for a comma-separated flag (`benchmarks: [aime24, math500]`) is joined with commas, a mapping for a
  JSON flag (`task_kwargs: {seed: 1}`) is written as JSON, a list for a repeatable flag (`model: [a,
  b]`) repeats it. A key no flag has is an error naming the key and the file. With subcommands
  (`p2o toy build`), the file holds the subcommand's options.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONFIG_HELP = (
    "YAML file of options: keys are the flags' names (e.g. output_dir: runs/x); flags given on the "
    "command line override it."
)


def report_errors(prog: str, fn: Callable[[], int]) -> int:
    """Run `fn`; a `p2o.errors.UserError` (an invalid config value, a bad data row, an unknown task,
    verifier or reflection model, a toy build that did not learn) becomes `prog: ...` on stderr and
    exit code 2."""
    import yaml

    from p2o.errors import UserError

    try:
        return int(fn() or 0)
    except UserError as e:
        print(f"{prog}: {e.prefix}{e}", file=sys.stderr)
        return 2
    except yaml.YAMLError as e:  # a config file TRL's parser read
        print(f"{prog}: {_yaml_problem(e)}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:  # a path given by the user
        print(f"{prog}: {e.filename}: no such file. Check the path.", file=sys.stderr)
        return 2


def _yaml_problem(e: Exception) -> str:
    """`FILE line L column C: what is wrong` (1-based) for a YAML error."""
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    if mark is None:
        return f"invalid YAML: {what}"
    return (
        f"{mark.name} line {mark.line + 1} column {mark.column + 1}: invalid YAML ({what}). Fix the file: "
        "one 'key: value' per line, nested values indented, strings with ': ' or '#' in quotes."
    )


# ---------------------------------------------------------------- one flag style


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def uniform_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Accept every long flag of `parser` (and its subcommands) as `--a_b` and as `--a-b`; add
    `--config FILE` to each parser that takes options. Idempotent."""
    parser.allow_abbrev = False  # `--out` would be ambiguous between --output_dir and --output-dir
    sub = _subparsers(parser)
    if sub is not None:
        for child in dict.fromkeys(sub.choices.values()):
            uniform_flags(child)
        return parser
    if "--config" not in parser._option_string_actions:
        parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    for action in parser._actions:
        names: list[str] = []
        for opt in action.option_strings:
            forms = [opt]
            if opt.startswith("--"):
                forms = ["--" + opt[2:].replace("-", "_"), "--" + opt[2:].replace("_", "-")]
            names += [f for f in dict.fromkeys(forms) if f not in names]
        for name in names:
            other = parser._option_string_actions.get(name)
            if other is not None and other is not action:
                raise ValueError(f"{parser.prog}: {name} names two options ({other.dest}, {action.dest})")
            parser._option_string_actions[name] = action
        action.option_strings = names
    return parser


# ---------------------------------------------------------------- --config FILE


def _pop_config(argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv without `--config FILE`, the files in the order given)."""
    rest: list[str] = []
    files: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        if arg.startswith("--config="):
            files.append(arg[len("--config=") :])
        elif arg == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
            i += 1
        else:
            rest.append(arg)
        i += 1
    return rest, files


def _leaf(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser that will read the options: follows the subcommand names in `argv`."""
    sub = _subparsers(parser)
    if sub is None:
        return parser
    for i, arg in enumerate(argv):
        if arg in sub.choices:
            return _leaf(sub.choices[arg], argv[i + 1 :])
    return parser


def _read_yaml(parser: argparse.ArgumentParser, file: str) -> dict[str, Any]:
    import yaml

    path = Path(file).expanduser()
    if not path.is_file():
        parser.error(f"--config {file}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        parser.error(f"--config {file}: invalid YAML ({e})")
    if data is None:
        return {}
    if not isinstance(data, dict):
        parser.error(
            f"--config {file}: expected a mapping of option names to values, got {type(data).__name__}"
        )
    return data


def _convert(parser: argparse.ArgumentParser, action: argparse.Action, key: str, value: Any, where: str):
    """A YAML value as the flag would have produced it."""
    is_flag = isinstance(action, argparse._StoreConstAction | argparse.BooleanOptionalAction)
    if is_flag:
        if not isinstance(value, bool):
            parser.error(f"--config {where}: {key} takes true or false (got {value!r})")
        if isinstance(action, argparse._StoreConstAction):  # store_true / store_false
            return action.const if value else action.default
        return value
    if value is None:
        return None
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [_convert_one(parser, action, key, v, where) for v in items]
    if isinstance(value, dict):
        value = json.dumps(value)
    elif isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return _convert_one(parser, action, key, value, where)


def _convert_one(parser: argparse.ArgumentParser, action: argparse.Action, key: str, value: Any, where: str):
    if isinstance(value, bool):
        parser.error(f"--config {where}: {key} takes a value, not {value!r}")
    kind = action.type
    try:
        if kind in (int, float) and isinstance(value, int | float):
            if kind is int and isinstance(value, float):
                raise ValueError(f"not an integer: {value!r}")
            value = kind(value)
        elif callable(kind):
            value = kind(str(value))
        else:
            value = str(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
        parser.error(f"--config {where}: {key}: {e}")
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        parser.error(f"--config {where}: {key} must be one of {choices} (got {value!r})")
    return value


def _apply_config(parser: argparse.ArgumentParser, files: list[str]) -> dict[str, list]:
    """Set `parser`'s defaults from the YAML files; returns the repeatable options they set."""
    by_name: dict[str, argparse.Action] = {}
    positional: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction) or action.dest == "config":
            continue
        if not action.option_strings:
            positional.add(action.dest)
            continue
        by_name[action.dest] = action
        for opt in action.option_strings:
            by_name.setdefault(opt.lstrip("-").replace("-", "_"), action)
    appended: dict[str, list] = {}
    for file in files:
        for key, value in _read_yaml(parser, file).items():
            name = str(key).replace("-", "_")
            if name in positional:
                parser.error(
                    f"--config {file}: {key!r} is a positional argument; give it on the command line"
                )
            action = by_name.get(name)
            if action is None:
                known = sorted({a.dest for a in by_name.values()})
                parser.error(f"--config {file}: unknown key {key!r}. Known keys: {', '.join(known)}")
            value = _convert(parser, action, str(key), value, file)
            parser.set_defaults(**{action.dest: value})
            action.required = False
            if isinstance(action, argparse._AppendAction):
                appended[action.dest] = value or []
    return appended


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse `argv` (default: `sys.argv[1:]`) in p2o's flag style, reading `--config FILE` first."""
    uniform_flags(parser)
    argv, files = _pop_config(list(sys.argv[1:] if argv is None else argv))
    leaf = _leaf(parser, argv)
    appended = _apply_config(leaf, files) if files else {}
    args = parser.parse_args(argv)
    for dest, from_file in appended.items():
        given = getattr(args, dest, None) or []
        if len(given) > len(from_file):  # flags on the command line replace the file's list
            setattr(args, dest, given[len(from_file) :])
    args.config = files[-1] if files else None
    return args
