"""Plug-ins: modules that add tasks, verifiers, reflection models, benchmark groups and commands.

A plug-in registers what it brings when it is imported:

    from p2o.plugins import register_reflector
    from p2o.tasks import register_task, register_verifier

    @register_reflector("my-teacher")
    def my_teacher(seed=0, **options):          # options: seed, temperature, max_tokens
        return lambda prompt: "```\\nThink step by step.\\n```"   # or a p2o.evolve.Reflector

    # then `reflection: my-teacher` in a config

p2o imports plug-ins the first time one of its registries is asked for a name (`load_plugins`):

- the modules installed distributions declare in the entry-point group `p2o.plugins`, in their
  pyproject.toml: `[project.entry-points."p2o.plugins"]` then `my_world = "my_pkg.p2o_plugin"`;
- the plug-ins shipped inside p2o: each sub-package of `p2o` that holds a `plugin.py`. They are found
  by their file, so they work the same from a checkout, `PYTHONPATH`, an editable install or a wheel,
  and deleting the sub-package removes the plug-in with nothing left to edit in the core.

Code that registers things itself (a script, a test) needs neither: registering is enough.
This module imports nothing from p2o, so every layer may use it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENTRY_POINT_GROUP = "p2o.plugins"

_REFLECTORS: dict[str, Callable[..., Any]] = {}
_COMMANDS: dict[str, tuple[str, str]] = {}
_loaded = False


def register_reflector(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a reflection-model factory under `name` (what `config.reflection` names).

    The factory is called with keyword options `seed`, `temperature` and `max_tokens` (accept
    `**options` and use what you need) and returns a `p2o.evolve.Reflector` or any `prompt -> str`
    callable. The built-in names (`self`, `initial`, `teacher:<model>`) cannot be taken.
    """
    if name in ("self", "initial") or name.startswith("teacher:"):
        raise ValueError(f"reflection model name {name!r} is built in; register another name")

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        _REFLECTORS[name] = factory
        return factory

    return deco


def reflector_factory(name: str) -> Callable[..., Any] | None:
    """The factory registered as `name`, or None."""
    load_plugins()
    return _REFLECTORS.get(name)


def list_reflectors() -> list[str]:
    """Names of the registered reflection models (plug-ins loaded first)."""
    load_plugins()
    return sorted(_REFLECTORS)


def register_command(name: str, module: str, help_text: str) -> None:
    """Add `p2o <name>`: `module` has `main(argv) -> int`, imported only when the command runs."""
    _COMMANDS[name] = (module, help_text)


def plugin_commands() -> dict[str, tuple[str, str]]:
    """name -> (module, one-line help) of the commands plug-ins add."""
    load_plugins()
    return dict(_COMMANDS)


def load_plugins() -> None:
    """Import every plug-in once: the shipped ones (`p2o/<package>/plugin.py`), then the entry points
    of group `p2o.plugins`. A plug-in that fails to import is skipped with a warning that names it."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: a plug-in's own imports ask the registries again
    for module in (*_shipped_plugins(), *_entry_point_plugins()):
        _import_plugin(module)


def _shipped_plugins() -> list[str]:
    return sorted(
        f"p2o.{sub.name}.plugin"
        for sub in Path(__file__).parent.iterdir()
        if (sub / "__init__.py").is_file() and (sub / "plugin.py").is_file()
    )


def _entry_point_plugins() -> list[str]:
    return [ep.value.split(":")[0].strip() for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]


def _import_plugin(module: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
            return  # the plug-in itself is gone (uninstalled, or its package removed): nothing to load
        warnings.warn(
            f"p2o plug-in {module} not loaded: it imports {e.name!r}, which is not installed", stacklevel=3
        )
    except Exception as e:  # one broken plug-in must not stop the others or the core
        warnings.warn(f"p2o plug-in {module} not loaded: {type(e).__name__}: {e}", stacklevel=3)
