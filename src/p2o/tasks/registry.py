"""Registries for tasks and verifiers: found by name or by dotted path (`my_pkg.mod:fn`)."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from p2o.errors import RegistryError
from p2o.plugins import load_plugins
from p2o.tasks.base import Task, Verifier

T = TypeVar("T")


_VERIFIERS: dict[str, Callable[..., Verifier]] = {}
_TASKS: dict[str, Callable[..., Task]] = {}
# Modules that register built-ins when imported; imported lazily so `import p2o.tasks` stays light.
# Plug-ins (the toy world, a user's package) register theirs through `p2o.plugins`.
_BUILTIN_MODULES = ("p2o.tasks.math",)


def register_verifier(name: str) -> Callable[[Callable[..., Verifier]], Callable[..., Verifier]]:
    """Decorator: register a verifier *factory* (called with keyword options, returns the verifier)."""

    def deco(factory: Callable[..., Verifier]) -> Callable[..., Verifier]:
        _VERIFIERS[name] = factory
        return factory

    return deco


def register_task(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Decorator: register a task factory (called with keyword options, returns a `Task`)."""

    def deco(factory: Callable[..., Task]) -> Callable[..., Task]:
        _TASKS[name] = factory
        return factory

    return deco


def _load_builtins() -> None:
    load_plugins()
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            # An absent built-in module (or its package) is skipped; a missing dependency inside it is not.
            if e.name is None or not (mod == e.name or mod.startswith(e.name + ".")):
                raise


def import_object(path: str) -> Any:
    """Import `pkg.mod:attr` (or `pkg.mod.attr`)."""
    if ":" in path:
        mod_name, attr = path.split(":", 1)
    elif "." in path:
        mod_name, attr = path.rsplit(".", 1)
    else:
        raise RegistryError(f"{path!r} is not a dotted path; expected 'package.module:name'")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name is None or mod_name == e.name or mod_name.startswith(e.name + "."):
            raise RegistryError(
                f"{path!r}: no module named {e.name or mod_name!r}. Check the spelling, install the package, "
                "or add its folder to PYTHONPATH."
            ) from e
        raise RegistryError(
            f"{path!r}: module {mod_name!r} imports {e.name!r}, which is not installed. Install it."
        ) from e
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RegistryError(f"{path!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _resolve(kind: str, table: dict[str, Callable[..., T]], name: str, kwargs: dict[str, Any]) -> T:
    _load_builtins()
    if name in table:
        return table[name](**kwargs)
    if ":" in name or "." in name:
        obj = import_object(name)
        # A dotted path may name a factory (a class or function taking options) or the thing itself.
        if kind == "verifier" and not kwargs and _looks_like_verifier(obj):
            return obj  # type: ignore[return-value]
        if kind == "task" and isinstance(obj, Task):
            return obj  # type: ignore[return-value]
        return obj(**kwargs)
    known = ", ".join(sorted(table)) or "(none)"
    close = difflib.get_close_matches(name, sorted(table), n=1)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    raise RegistryError(
        f"unknown {kind} {name!r}. {hint}Known {kind}s: {known}; or give a dotted path 'pkg.mod:factory'."
    )


def _looks_like_verifier(obj: Any) -> bool:
    import inspect

    if isinstance(obj, type):
        return False
    try:
        params = [
            p
            for p in inspect.signature(obj).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return True
    return len(params) == 2


def get_verifier(name_or_path: str, **kwargs: Any) -> Verifier:
    """A verifier by registry name (`math`, a plug-in's, ...) or dotted path (`my_pkg.mod:fn`)."""
    return _resolve("verifier", _VERIFIERS, name_or_path, kwargs)


def get_task(name_or_path: str, **kwargs: Any) -> Task:
    """A task by registry name (`math`, a plug-in's, ...) or dotted path to a `Task` or task factory."""
    return _resolve("task", _TASKS, name_or_path, kwargs)


def list_verifiers() -> list[str]:
    _load_builtins()
    return sorted(_VERIFIERS)


def list_tasks() -> list[str]:
    _load_builtins()
    return sorted(_TASKS)
