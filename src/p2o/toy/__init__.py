"""The toy world: a tiny local policy, a task whose hard samples only a prompt unlocks, a scripted teacher.

    from p2o.toy import ensure_toy_model
    path = ensure_toy_model(seed=0)          # built once (~2 min on 2 CPU cores), then cached
    model = AutoModelForCausalLM.from_pretrained(path)
    task = p2o.tasks.get_task("toy", seed=0)
    teacher = p2o.toy.make_toy_teacher(noise=0.2)   # scripted stand-in for a reflection LLM

See docs/toy.md for the design and the measured figures.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ToyTeacher",
    "build_toy_model",
    "default_cache_dir",
    "ensure_toy_model",
    "list_instructions",
    "make_toy_task",
    "make_toy_teacher",
    "make_world",
]


def __getattr__(name: str) -> Any:  # keep `import p2o.toy` light: torch/transformers load on use
    if name in ("build_toy_model", "default_cache_dir", "ensure_toy_model"):
        from p2o.toy import build

        return getattr(build, name)
    if name in ("ToyTeacher", "make_toy_teacher"):
        from p2o.toy import teacher

        return getattr(teacher, name)
    if name in ("make_world", "list_instructions"):
        from p2o.toy import world

        return getattr(world, name)
    if name == "make_toy_task":
        from p2o.toy.task import make_toy_task

        return make_toy_task
    raise AttributeError(f"module 'p2o.toy' has no attribute {name!r}")
