"""Tasks: a dataset source, a prompt builder and a verifier, found by registry name or dotted path."""

from p2o.tasks.base import Messages, Sample, Task, Verdict, Verifier
from p2o.tasks.registry import (
    get_task,
    get_verifier,
    import_object,
    list_tasks,
    list_verifiers,
    register_task,
    register_verifier,
)

__all__ = [
    "Messages",
    "Sample",
    "Task",
    "Verdict",
    "Verifier",
    "get_task",
    "get_verifier",
    "import_object",
    "list_tasks",
    "list_verifiers",
    "register_task",
    "register_verifier",
]
