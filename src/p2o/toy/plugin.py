"""The toy world as a p2o plug-in: the task and verifier `toy`, the scripted reflection model
`toy-teacher`, the benchmark group `toy_all`, and the commands `p2o toy` and `p2o demo`.

p2o finds this module by its file (`p2o.plugins`); nothing in the core names the toy world, so a
p2o without `p2o/toy/` is a complete toolkit. A user's plug-in registers its own the same way.
"""

from __future__ import annotations

from typing import Any

import p2o.toy.task  # noqa: F401  (registers the task and the verifier `toy`)
from p2o.plugins import register_command, register_reflector
from p2o.tasks.benchmarks import register_benchmark_group


@register_reflector("toy-teacher")
def toy_teacher(seed: int = 0, **_options: Any) -> Any:
    """The toy world's scripted teacher (`p2o.toy.teacher.make_toy_teacher`), its choices seeded."""
    from p2o.toy.teacher import make_toy_teacher

    return make_toy_teacher(seed=seed)


register_benchmark_group("toy_all", ("toy", "toy_hard", "toy_easy"))
register_command(
    "toy", "p2o.toy.cli", "Build the toy world: a tiny local policy whose hard samples only a prompt unlocks."
)
register_command(
    "demo", "p2o.demo", "Reproduce the paper's comparison in miniature on the toy world (CPU, minutes)."
)
