"""The one renderer T(x, z).

Every place that turns an original prompt x and a template z into the augmented prompt x̃ calls
`render_augmented`: GEPA evaluation, RL rollouts, distillation-data export and evaluation. So what
GEPA scored is exactly what the trainer generates from.
"""

from __future__ import annotations

import copy

from p2o.tasks.base import Messages

SEPARATOR = "\n\n"


def render_augmented(messages: Messages, template: str | None) -> Messages:
    """x̃ = T(x, z): the template text, a blank line, then the original user content.

    The template goes into the last user message (the one holding the problem); other messages are
    untouched. An empty or blank template returns a copy of x unchanged, so the paper's empty seed
    template renders the original prompt exactly.
    """
    out = copy.deepcopy(list(messages))
    if not template or not template.strip():
        return out
    for msg in reversed(out):
        if msg.get("role") == "user":
            msg["content"] = template.strip() + SEPARATOR + str(msg.get("content", ""))
            return out
    raise ValueError("cannot render a template: the prompt has no user message")
