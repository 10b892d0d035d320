"""Template programs: single-predictor DSPy modules whose instruction is the evolved template z.

A program is found by name in `programs/` (`math_cot` → `programs/math_cot.py`; the folders searched
and their order are in `p2o.resources`), by a `.py` path, or
by a dotted path (`my_pkg.programs:MyProgram`). A program file defines:

- `program`: a `dspy.Module` subclass (or instance) with exactly one predictor. Its signature has one
  input field (the problem text) and one output field (the policy's whole completion).
- `SEEDS` (optional): named seed templates, `{"empty": "", "stepwise": "Solve ..."}`; the first is
  the default. Without `SEEDS`, the predictor's own instruction is the seed (DSPy's generated
  placeholder instruction counts as empty).

`name@seed` picks a named seed: `math_cot@stepwise`.

The predictor's instruction *is* the template. `TemplateAdapter` (a DSPy adapter) turns a call of the
program into x̃ = T(x, z) with the one renderer, so running the program through DSPy, scoring it in
GEPA, and the trainer's templated rollouts all send the model the same messages.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
from dspy.signatures.signature import _default_instructions

from p2o.config import ConfigError
from p2o.resources import list_names, search_dirs
from p2o.tasks.base import Messages, PromptBuilder
from p2o.templates.render import render_augmented


class ProgramError(ConfigError):
    """A template program that cannot be found or does not have the expected shape (the `program`
    setting is at fault, so it is a `ConfigError`)."""


def programs_dirs() -> list[Path]:
    """Where program names are looked up, in order: $P2O_PROGRAMS_DIR, ./programs, the packaged ones
    (`p2o.resources`)."""
    return search_dirs("programs")


def template_of(signature: type[dspy.Signature]) -> str:
    """The template a signature carries: its instruction, with DSPy's generated placeholder = empty."""
    text = signature.instructions or ""
    if text.strip() == _default_instructions(signature).strip():
        return ""
    return text


class TemplateAdapter(dspy.Adapter):
    """A DSPy adapter that renders a template program's call as x̃ = T(x, z).

    `format` builds the task's original messages x from the input field and prepends the predictor's
    instruction z with `render_augmented`; `parse` returns the whole completion in the output field
    (the task's verifier reads the answer from it). Demos are not used: a template is all a program
    adds to the prompt.
    """

    def __init__(self, build_messages: PromptBuilder, **kwargs: Any):
        super().__init__(**kwargs)
        self.build_messages = build_messages

    def format(self, signature: type[dspy.Signature], demos: list[dict[str, Any]], inputs: dict[str, Any]):
        (input_field,) = signature.input_fields
        messages = self.build_messages(str(inputs[input_field]))
        return render_augmented(messages, template_of(signature))

    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        (output_field,) = signature.output_fields
        return {output_field: completion}


@dataclass
class TemplateProgram:
    """A loaded template program: the DSPy module, its one predictor, and its seed template."""

    name: str
    module: dspy.Module
    predictor_name: str
    seed: str
    seed_name: str
    source: str
    seeds: dict[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def signature(self) -> type[dspy.Signature]:
        return dict(self.module.named_predictors())[self.predictor_name].signature

    @property
    def input_field(self) -> str:
        return next(iter(self.signature.input_fields))

    @property
    def output_field(self) -> str:
        return next(iter(self.signature.output_fields))

    def with_template(self, template: str) -> dspy.Module:
        """A copy of the module whose predictor instruction is `template`."""
        module = copy.deepcopy(self.module)
        predictor = dict(module.named_predictors())[self.predictor_name]
        predictor.signature = predictor.signature.with_instructions(template)
        return module

    def render(self, build_messages: PromptBuilder, problem: str, template: str) -> Messages:
        """x̃ for `problem` under `template`, exactly as `TemplateAdapter` sends it to the model."""
        signature = self.signature.with_instructions(template)
        return TemplateAdapter(build_messages).format(signature, [], {self.input_field: problem})


def _load_file(path: Path) -> Any:
    mod_name = f"p2o_program_{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ProgramError(f"cannot import template program file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ProgramError(f"template program file {path} failed to import: {type(e).__name__}: {e}") from e
    return module


def _resolve(spec: str) -> tuple[Any, str, str]:
    """(module-or-object, object attribute or '', source description)."""
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.exists():
            raise ProgramError(f"template program file {path} does not exist")
        return _load_file(path), "", str(path)
    if "/" not in spec and (":" in spec or "." in spec):
        from p2o.tasks.registry import import_object

        try:
            return import_object(spec), "", spec
        except ValueError as e:
            raise ProgramError(f"template program {spec!r}: {e}") from e
    for d in programs_dirs():
        path = d / f"{spec}.py"
        if path.exists():
            return _load_file(path), "", str(path)
    raise ProgramError(
        f"unknown template program {spec!r}: no {spec}.py in {', '.join(str(d) for d in programs_dirs())}. "
        f"Known: {', '.join(list_programs()) or '(none)'}; or give a .py path or a dotted path 'pkg.mod:Program'."
    )


def list_programs() -> list[str]:
    """Program names available in the program directories."""
    return list_names("programs", (".py",))


def load_program(spec: str) -> TemplateProgram:
    """Load a template program by name (`math_cot`, `math_cot@stepwise`), `.py` path or dotted path."""
    spec = spec.strip()
    seed_name: str | None = None
    if "@" in spec:
        spec, seed_name = spec.rsplit("@", 1)
    obj, _, source = _resolve(spec)
    seeds: dict[str, str] = {}
    description = ""
    if isinstance(obj, type(sys)):  # a module: its `program` attribute, its SEEDS
        seeds = dict(getattr(obj, "SEEDS", {}) or {})
        description = (obj.__doc__ or "").strip()
        if not hasattr(obj, "program"):
            raise ProgramError(f"template program {source} defines no `program` (a dspy.Module subclass)")
        obj = obj.program
    module = obj() if isinstance(obj, type) else obj
    if not isinstance(module, dspy.Module):
        raise ProgramError(
            f"template program {source}: `program` must be a dspy.Module, got {type(module).__name__}"
        )
    predictors = module.named_predictors()
    if len(predictors) != 1:
        raise ProgramError(
            f"template program {source} must have exactly one predictor (the template it evolves); "
            f"found {len(predictors)}: {', '.join(n for n, _ in predictors) or '(none)'}"
        )
    predictor_name, predictor = predictors[0]
    sig = predictor.signature
    if len(sig.input_fields) != 1 or len(sig.output_fields) != 1:
        raise ProgramError(
            f"template program {source}: the predictor's signature needs one input field (the problem) and one "
            f"output field (the completion); it has {list(sig.input_fields)} -> {list(sig.output_fields)}"
        )
    if not seeds:
        seeds = {"default": template_of(sig)}
    if seed_name is None:
        seed_name = next(iter(seeds))
    if seed_name not in seeds:
        raise ProgramError(f"template program {source} has no seed {seed_name!r}; seeds: {', '.join(seeds)}")
    seed = seeds[seed_name]
    name = Path(spec).stem if spec.endswith(".py") else spec
    return TemplateProgram(
        name=name,
        module=module,
        predictor_name=predictor_name,
        seed=seed,
        seed_name=seed_name,
        source=source,
        seeds=seeds,
        description=description,
    )
