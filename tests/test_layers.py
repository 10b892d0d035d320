"""The layout of `src/p2o/` is its architecture: each layer imports only the layers below it, and
the core never names the toy world (a plug-in like any user's). Every import counts, including the
ones inside functions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import p2o

SRC = Path(p2o.__file__).parent

# Bottom first. A module may import its own package and any package of a lower rank.
RANKS = {
    "__init__": 0,  # the version and one environment default
    "errors": 0,
    "resources": 0,
    "plugins": 0,
    "files": 0,
    "devices": 0,
    "workers": 0,  # worker processes that end with their command (stdlib only)
    "cliutil": 1,
    "tasks": 2,
    "templates": 3,
    "policy": 4,
    "config": 4,
    "evolve": 5,
    "evaluation": 5,
    "train": 6,
    # Applications and plug-ins on top: nothing below imports them.
    "rehearse": 7,
    "toy": 7,
    "cli": 7,
    "demo": 8,  # the toy world's comparison: trains (train) on the toy world (toy)
}
TOY_WORLD = {"toy", "demo"}  # the toy plug-in and its `p2o demo` command


def part(module: str) -> str:
    """`p2o.tasks.data` -> `tasks`; `p2o` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports() -> list[tuple[str, int, str]]:
    """(file, line, imported p2o module) for every import in src/p2o."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent)
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the importing package
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    names = [".".join([*base, node.module] if node.module else base)]
                else:
                    names = [node.module or ""]
            else:
                continue
            out += [(str(rel), node.lineno, n) for n in names if n == "p2o" or n.startswith("p2o.")]
    return out


def test_every_part_of_p2o_has_a_layer():
    parts = {part(".".join(p.relative_to(SRC.parent).with_suffix("").parts)) for p in SRC.rglob("*.py")}
    assert parts <= set(RANKS), f"give these a rank in RANKS: {sorted(parts - set(RANKS))}"


def test_no_layer_imports_a_higher_one():
    upward = []
    for file, line, target in imports():
        source = part(".".join(Path(file).with_suffix("").parts).removesuffix(".__init__"))
        to = part(target)
        if to != source and RANKS[to] >= RANKS[source]:
            upward.append(
                f"{file}:{line} imports {target} ({source} rank {RANKS[source]} -> {to} rank {RANKS[to]})"
            )
    assert not upward, "upward imports:\n" + "\n".join(upward)


def toy_module_names() -> list[tuple[str, int, str]]:
    """(file, line, string) for every string constant that is the name of a toy module."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and re.fullmatch(r"p2o\.toy(\.\w+)*(:\w+)?", str(node.value)):
                out.append((str(path.relative_to(SRC.parent)), node.lineno, node.value))
    return out


def test_the_core_never_names_the_toy_world():
    named = [
        f"{file}:{line} names {target}"
        for file, line, target in imports() + toy_module_names()
        if part(target.split(":")[0]) == "toy"
        and part(".".join(Path(file).with_suffix("").parts)) not in TOY_WORLD
    ]
    assert not named, "core modules importing the toy world:\n" + "\n".join(named)
