"""Template programs: single-predictor DSPy modules whose instruction is the evolved template z.

A program is found by name in `programs/` (`math_cot` → `programs/math_cot.py`; the folders searched
and their order are in `p2o.resources`), by a `.py` path, or
by a dotted path (`my_pkg.programs:MyProgram`). A program file defines:

- `program`: a `dspy.Module` subclass (or instance) with exactly one predictor (`dspy.Predict`,
  `dspy.ChainOfThought`, ...) of any signature shape. The first input field holds the problem; the
  last output field receives the policy's whole completion (the task's verifier reads the answer
  from it; other output fields, such as ChainOfThought's `reasoning`, stay empty: the policy's
  reasoning is part of its completion).
- `SEEDS` (optional): named seed templates, `{"empty": "", "stepwise": "Solve ..."}`; the first is
  the default. Without `SEEDS`, the predictor's own instruction is the seed (DSPy's generated
  placeholder instruction counts as empty).

`name@seed` picks a named seed: `math_cot@stepwise`.

The predictor's instruction *is* the template; its demos, if any, are part of it too, rendered after
the instruction as worked examples (`template_text`). `TemplateAdapter` (a DSPy adapter) turns a call
of the program into x̃ = T(x, z) with the one renderer, so running the program through DSPy, scoring
it in GEPA, and the trainer's templated rollouts all send the model the same messages.

Why one predictor: context distillation trains log π(y | x) on rollouts generated from one prompt
x̃ = T(x, z). A pipeline of several LM calls has no single x̃ whose completion is the answer, so a
module with several predictors is refused.

Evolved programs leave a phase as DSPy program files (the module's own `save`, JSON) in
`<phase dir>/programs/`; `load_evolved(path)` gives one back as a module ready to call with any
`dspy.LM` (`p2o export` copies one out of a run).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy
from dspy.signatures.signature import _default_instructions

from p2o.errors import ConfigError
from p2o.resources import list_names, search_dirs
from p2o.tasks.base import Messages, PromptBuilder
from p2o.templates.render import render_augmented


class ProgramError(ConfigError):
    """A template program that cannot be found or does not have the expected shape (the `program`
    setting is at fault, so it is a `ConfigError`)."""


# DSPy's placeholder instruction for a signature without one: "Given the fields `a`, `b`, produce the
# fields `c`." ChainOfThought and other wrappers extend the signature but keep the original
# placeholder, so any text of this shape counts as "no template".
_PLACEHOLDER = re.compile(r"Given the fields? (`[^`]+`(, )?)+, produce the fields? (`[^`]+`(, )?)+\.")
DEMOS_HEADER = "Worked examples:"


def template_of(signature: type[dspy.Signature]) -> str:
    """The instruction a signature carries: DSPy's generated placeholder = empty."""
    text = signature.instructions or ""
    if text.strip() == _default_instructions(signature).strip() or _PLACEHOLDER.fullmatch(text.strip()):
        return ""
    return text


def _label(signature: type[dspy.Signature], name: str) -> str:
    f = {**signature.input_fields, **signature.output_fields}[name]
    prefix = (f.json_schema_extra or {}).get("prefix") or f"{name}:"
    return prefix.strip()


def demos_text(signature: type[dspy.Signature], demos: list[Any]) -> str:
    """A predictor's demos as worked examples: each field labelled, inputs then outputs ('' for none)."""
    blocks = []
    for i, demo in enumerate(demos, 1):
        d = demo.toDict() if hasattr(demo, "toDict") else dict(demo)
        lines = [
            f"{_label(signature, name)} {d[name]}"
            for name in (*signature.input_fields, *signature.output_fields)
            if str(d.get(name, "") or "").strip()
        ]
        if lines:
            blocks.append(f"Example {i}\n" + "\n".join(lines))
    return f"{DEMOS_HEADER}\n\n" + "\n\n".join(blocks) if blocks else ""


def template_text(signature: type[dspy.Signature], demos: list[Any] | None = None) -> str:
    """The template z a predictor stands for: its instruction, then its demos as worked examples."""
    parts = [template_of(signature).strip(), demos_text(signature, list(demos or []))]
    return "\n\n".join(p for p in parts if p)


def problem_text(signature: type[dspy.Signature], inputs: dict[str, Any]) -> str:
    """The problem the task turns into the user message. With only the first input field given (as
    in a phase and in training, where a sample has one problem text): its value, unchanged. With
    several: each given field labelled, in signature order, separated by blank lines."""
    names = list(signature.input_fields)
    given = [n for n in names if str(inputs.get(n, "") or "").strip()]
    if given == names[:1] or not given:
        return str(inputs.get(names[0], "") or "")
    return "\n\n".join(f"{_label(signature, n)} {inputs[n]}" for n in given)


class TemplateAdapter(dspy.Adapter):
    """A DSPy adapter that renders a template program's call as x̃ = T(x, z).

    `format` builds the task's original messages x from the input fields (`problem_text`) and
    prepends the template z — the predictor's instruction and its demos as worked examples
    (`template_text`) — with `render_augmented`; `parse` puts the whole completion in the last output
    field (the task's verifier reads the answer from it) and leaves other output fields empty. An
    empty completion is an empty answer, not an error: the verifier scores it.
    """

    def __init__(self, build_messages: PromptBuilder, **kwargs: Any):
        super().__init__(**kwargs)
        self.build_messages = build_messages

    def format(self, signature: type[dspy.Signature], demos: list[dict[str, Any]], inputs: dict[str, Any]):
        messages = self.build_messages(problem_text(signature, inputs))
        return render_augmented(messages, template_text(signature, demos))

    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        *others, answer = signature.output_fields
        return {**{name: "" for name in others}, answer: completion}

    def _call_postprocess(self, processed_signature, original_signature, outputs, lm, lm_kwargs):
        values = []
        for output in outputs:
            text = output.get("text") if isinstance(output, dict) else output
            values.append(self.parse(original_signature, text or ""))
        return values


@dataclass
class TemplateProgram:
    """A loaded template program: the DSPy module, its one predictor, and its seed template."""

    name: str
    module: dspy.Module
    predictor_name: str
    seed: str
    seed_name: str
    source: str
    description: str = ""

    @property
    def predictor(self) -> dspy.Predict:
        return dict(self.module.named_predictors())[self.predictor_name]

    @property
    def signature(self) -> type[dspy.Signature]:
        return self.predictor.signature

    @property
    def demos(self) -> list[Any]:
        return list(self.predictor.demos or [])

    @property
    def input_field(self) -> str:
        """The field a sample's problem fills."""
        return next(iter(self.signature.input_fields))

    @property
    def output_field(self) -> str:
        """The field the policy's whole completion fills."""
        return list(self.signature.output_fields)[-1]

    def inputs(self, problem: str) -> dict[str, str]:
        """The predictor's inputs for one sample: the problem in the first field, the others empty."""
        return {name: (problem if i == 0 else "") for i, name in enumerate(self.signature.input_fields)}

    def template(self, instruction: str) -> str:
        """z for an evolved instruction: the instruction, then the program's demos as worked examples.
        This is the text the trainer renders with `render_augmented` (= the instruction without demos)."""
        return template_text(self.signature.with_instructions(instruction), self.demos)

    def with_template(self, template: str) -> dspy.Module:
        """A copy of the module whose predictor instruction is `template`."""
        module = copy.deepcopy(self.module)
        predictor = dict(module.named_predictors())[self.predictor_name]
        predictor.signature = predictor.signature.with_instructions(template)
        return module

    def predictor_with(self, instruction: str) -> dspy.Predict:
        """A copy of the predictor (demos kept) whose instruction is `instruction`."""
        predictor = copy.deepcopy(self.predictor)
        predictor.signature = predictor.signature.with_instructions(instruction)
        return predictor

    def render(self, build_messages: PromptBuilder, problem: str, template: str) -> Messages:
        """x̃ for `problem` under instruction `template`, exactly as `TemplateAdapter` sends it."""
        signature = self.signature.with_instructions(template)
        return TemplateAdapter(build_messages).format(signature, self.demos, self.inputs(problem))

    def save_evolved(self, path: str | Path, instruction: str, **info: Any) -> Path:
        """Save the module with `instruction` as a DSPy program file (the module's own `save`, JSON).

        `info` (template id, round, task, scores) goes under `metadata.p2o`, with what `load_evolved`
        needs to rebuild the module: the program's source and the template text z."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        module = self.with_template(instruction)
        module.save(str(path))
        state = json.loads(path.read_text(encoding="utf-8"))
        state.setdefault("metadata", {})["p2o"] = {
            "program": self.name,
            "program_source": self.source,
            "predictor": self.predictor_name,
            "instruction": instruction,
            "template": self.template(instruction),
            **info,
        }
        path.write_text(json.dumps(state, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


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
    for d in search_dirs("programs"):
        path = d / f"{spec}.py"
        if path.exists():
            return _load_file(path), "", str(path)
    raise ProgramError(
        f"unknown template program {spec!r}: no {spec}.py in {', '.join(str(d) for d in search_dirs('programs'))}. "
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
            f"template program {source} has {len(predictors)} predictors "
            f"({', '.join(n for n, _ in predictors) or 'none'}); a template program needs exactly one predictor. P²O "
            "distils what one prompt x̃ = T(x, z) unlocks into the policy's answer to x: a pipeline of "
            "several LM calls has no single prompt whose completion is the answer. Keep the one predictor "
            "whose instruction should evolve (dspy.Predict or dspy.ChainOfThought of any signature)."
        )
    predictor_name, predictor = predictors[0]
    sig = predictor.signature
    if not sig.input_fields or not sig.output_fields:
        raise ProgramError(
            f"template program {source}: the predictor's signature needs at least one input field (the "
            f"problem) and one output field (the completion); it has {list(sig.input_fields)} -> "
            f"{list(sig.output_fields)}"
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
        description=description,
    )


class _TextTemplate(dspy.Signature):
    problem: str = dspy.InputField()
    completion: str = dspy.OutputField()


class _TextTemplateProgram(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.solve = dspy.Predict(_TextTemplate)

    def forward(self, problem: str) -> dspy.Prediction:
        return self.solve(problem=problem)


def text_program(template: str = "") -> TemplateProgram:
    """The program a bare template text runs as: one `dspy.Predict(problem -> completion)` without
    demos whose instruction is the text, so a call sends exactly `render_augmented(x, template)`."""
    return TemplateProgram(
        name="text",
        module=_TextTemplateProgram(),
        predictor_name="solve",
        seed=template,
        seed_name="text",
        source="(template text)",
    )


class EvolvedProgram(dspy.Module):
    """An evolved template program, ready to call: the program's own module (with the evolved
    instruction) run through the task's `TemplateAdapter`, so a call sends the policy exactly the
    x̃ = T(x, z) the trainer generates from. Configure any `dspy.LM` as usual (`dspy.configure(lm=...)`
    or `dspy.context(lm=...)`); `dspy.inspect_history()` shows the messages.

    `program` is the plain module (hand it to `dspy.GEPA`, MIPRO, ... with
    `dspy.context(adapter=evolved.adapter)`); `template` is z; `info` what p2o recorded about it.
    """

    def __init__(self, program: dspy.Module, adapter: TemplateAdapter, info: dict[str, Any]):
        super().__init__()
        self.program = program
        self.adapter = adapter
        self.info = dict(info)

    @property
    def template(self) -> str:
        return str(self.info.get("template", ""))

    def forward(self, **inputs: Any) -> dspy.Prediction:
        with dspy.context(adapter=self.adapter):
            return self.program(**inputs)


def read_evolved_info(path: str | Path) -> dict[str, Any]:
    """What p2o recorded in an evolved program file (`metadata.p2o`)."""
    path = Path(path)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ProgramError(f"evolved program file {path} does not exist") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProgramError(f"evolved program file {path} is not JSON: {e}") from e
    info = (state.get("metadata") or {}).get("p2o") if isinstance(state, dict) else None
    if not isinstance(info, dict):
        raise ProgramError(
            f"{path} is not an evolved p2o program (no metadata.p2o): load a plain DSPy program file "
            "with YourModule().load(path) instead"
        )
    return info


def load_evolved(
    path: str | Path,
    *,
    task: Any = None,
    program: str | TemplateProgram | None = None,
) -> EvolvedProgram:
    """An evolved program file (`<phase dir>/programs/*.json`, or what `p2o export` wrote) as a
    module ready to call.

    `task`: a `Task` or task name for the prompt builder x (default: the task recorded in the file,
    by name, with its default arguments). `program`: the template program the file was saved from
    (default: the one recorded, by its file path when it still exists, else by name).

        import dspy
        from p2o.templates import load_evolved

        evolved = load_evolved("runs/toy_evolve/programs/best.json")
        with dspy.context(lm=dspy.LM("openai/<served model>", api_base="http://127.0.0.1:8000/v1",
                                     api_key="none", cache=False)):
            print(evolved(problem="...").completion)
        dspy.inspect_history()
    """
    path = Path(path)
    prog = evolved_program(path, program=program)
    info = read_evolved_info(path)
    if task is None or isinstance(task, str):
        name = task or info.get("task")
        if not name:
            raise ProgramError(f"{path} records no task: pass task= (a Task or a task name) to load_evolved")
        from p2o.tasks.registry import get_task

        task = get_task(name)
    return EvolvedProgram(prog.module, TemplateAdapter(task.build_messages), info)


def evolved_program(path: str | Path, *, program: str | TemplateProgram | None = None) -> TemplateProgram:
    """An evolved program file as a `TemplateProgram` whose module holds the saved instruction and
    demos and whose seed is the evolved instruction (`program.template(program.seed)` is z). No task
    is needed: pair it with any task's `TemplateAdapter`. `program` as in `load_evolved`."""
    path = Path(path)
    info = read_evolved_info(path)
    if isinstance(program, TemplateProgram):
        prog = program
    else:
        spec = program or info.get("program_source") or info.get("program")
        if program is None and not Path(str(spec)).exists() and info.get("program"):
            spec = info["program"]  # the file it came from moved: find the program by name
        prog = load_program(str(spec))
    module = copy.deepcopy(prog.module)
    try:
        module.load(str(path))
    except Exception as e:
        raise ProgramError(
            f"{path} does not fit template program {prog.source} ({type(e).__name__}: {e}); pass the "
            "program it was saved from as program="
        ) from e
    predictor_name = info.get("predictor", prog.predictor_name)
    predictor = dict(module.named_predictors()).get(predictor_name)
    if predictor is None:
        raise ProgramError(f"{path}: the program {prog.source} has no predictor {predictor_name!r}")
    if "template" in info:
        got = template_text(predictor.signature, list(predictor.demos or []))
        if got.strip() != str(info["template"]).strip():
            raise ProgramError(
                f"{path}: the loaded program renders template {got[:80]!r}, but the file records "
                f"{str(info['template'])[:80]!r}; the program {prog.source} changed since the file was saved"
            )
    instruction = str(info.get("instruction", template_of(predictor.signature)))
    return TemplateProgram(
        name=str(info.get("program") or prog.name),
        module=module,
        predictor_name=predictor_name,
        seed=instruction,
        seed_name="evolved",
        source=str(path),
        description=prog.description,
    )
