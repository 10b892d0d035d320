"""Templates: the one renderer T(x, z), template programs and reflection meta-prompts.

`render_augmented` is imported eagerly; the program and meta-prompt helpers (which import DSPy) load
on first use, so `from p2o.templates import render_augmented` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from p2o.templates.render import render_augmented

_LAZY = {
    "MetaPrompt": "p2o.templates.meta_prompts",
    "list_meta_prompts": "p2o.templates.meta_prompts",
    "load_meta_prompt": "p2o.templates.meta_prompts",
    "EvolvedProgram": "p2o.templates.programs",
    "ProgramError": "p2o.templates.programs",
    "TemplateAdapter": "p2o.templates.programs",
    "TemplateProgram": "p2o.templates.programs",
    "list_programs": "p2o.templates.programs",
    "evolved_program": "p2o.templates.programs",
    "load_evolved": "p2o.templates.programs",
    "load_program": "p2o.templates.programs",
    "read_evolved_info": "p2o.templates.programs",
    "template_of": "p2o.templates.programs",
    "template_text": "p2o.templates.programs",
    "text_program": "p2o.templates.programs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'p2o.templates' has no attribute {name!r}")


__all__ = ["render_augmented", *_LAZY]
