"""Template programs render through the one renderer; meta-prompts are checked before use."""

from __future__ import annotations

import textwrap

import dspy
import pytest

from p2o.config import ConfigError
from p2o.templates import (
    ProgramError,
    TemplateAdapter,
    list_meta_prompts,
    list_programs,
    load_meta_prompt,
    load_program,
    render_augmented,
    template_of,
)


def build_messages(problem: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a careful solver."},
        {"role": "user", "content": f"Problem: {problem}"},
    ]


def test_builtin_programs_and_seeds():
    assert {"math_cot", "toy"} <= set(list_programs())
    paper = load_program("math_cot")
    assert paper.seed == "" and paper.seed_name == "empty"
    assert (paper.predictor_name, paper.input_field, paper.output_field) == ("solve", "problem", "completion")
    stepwise = load_program("math_cot@stepwise")
    assert stepwise.seed.startswith("Solve the problem step by step")
    toy = load_program("toy")
    assert toy.seed == ""
    with pytest.raises(ProgramError, match="no seed 'nope'"):
        load_program("math_cot@nope")


def test_program_render_is_the_one_renderer():
    prog = load_program("math_cot")
    z = "Think about parity first."
    got = prog.render(build_messages, "2+2?", z)
    assert got == render_augmented(build_messages("2+2?"), z)
    assert got[1]["content"] == "Think about parity first.\n\nProblem: 2+2?"
    assert got[0] == build_messages("2+2?")[0]  # the system message is untouched
    # The empty seed template renders x itself, even though DSPy stores a placeholder instruction.
    assert prog.render(build_messages, "2+2?", "") == build_messages("2+2?")
    assert template_of(prog.signature.with_instructions("")) == ""


class _RecordingLM(dspy.BaseLM):
    """Answers every call with a fixed text and records the messages it was sent."""

    def __init__(self):
        super().__init__(model="recording")
        self.seen: list[list[dict[str, str]]] = []

    def forward(self, prompt=None, messages=None, **kwargs):
        self.seen.append(messages)
        from types import SimpleNamespace

        msg = SimpleNamespace(content="The answer is \\boxed{4}.", tool_calls=None)
        choice = SimpleNamespace(message=msg, finish_reason="stop", index=0)
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        return SimpleNamespace(choices=[choice], usage=usage, model="recording")


def test_running_the_dspy_program_sends_the_rendered_prompt():
    """Running the program through DSPy with TemplateAdapter sends exactly T(x, z)."""
    prog = load_program("math_cot")
    module = prog.with_template("Use small cases.")
    lm = _RecordingLM()
    with dspy.context(lm=lm, adapter=TemplateAdapter(build_messages)):
        out = module(problem="2+2?")
    assert lm.seen[-1] == render_augmented(build_messages("2+2?"), "Use small cases.")
    assert out.completion == "The answer is \\boxed{4}."


def test_program_from_file_and_dotted_path(tmp_path, monkeypatch):
    src = textwrap.dedent(
        '''
        """A custom program."""
        import dspy

        class Sig(dspy.Signature):
            """Answer in one word."""
            question: str = dspy.InputField()
            response: str = dspy.OutputField()

        class Prog(dspy.Module):
            def __init__(self):
                super().__init__()
                self.p = dspy.Predict(Sig)

        program = Prog
        '''
    )
    (tmp_path / "custom_prog.py").write_text(src)
    by_path = load_program(str(tmp_path / "custom_prog.py"))
    assert by_path.seed == "Answer in one word."  # no SEEDS: the predictor's instruction is the seed
    assert (by_path.input_field, by_path.output_field) == ("question", "response")
    monkeypatch.syspath_prepend(str(tmp_path))
    by_dotted = load_program("custom_prog:Prog")
    assert by_dotted.seed == "Answer in one word." and by_dotted.predictor_name == "p"
    # Dropping a file into a programs directory makes it a name.
    monkeypatch.setenv("P2O_PROGRAMS_DIR", str(tmp_path))
    assert load_program("custom_prog").name == "custom_prog"


def test_bad_programs_are_refused(tmp_path):
    with pytest.raises(ProgramError, match="unknown template program 'no_such'"):
        load_program("no_such")
    two = tmp_path / "two.py"
    two.write_text(
        "import dspy\n"
        "class P(dspy.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a = dspy.Predict('q -> a')\n"
        "        self.b = dspy.Predict('q -> a')\n"
        "program = P\n"
    )
    with pytest.raises(ProgramError, match="exactly one predictor"):
        load_program(str(two))
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ProgramError, match="defines no `program`"):
        load_program(str(empty))


def test_meta_prompts_ship_and_render():
    assert {"default", "compact", "toy"} <= set(list_meta_prompts())
    default = load_meta_prompt("default")
    from gepa.strategies.instruction_proposal import InstructionProposalSignature

    assert default.text == InstructionProposalSignature.default_prompt_template.strip()
    examples = [{"Inputs": {"problem": "1+1"}, "Generated Outputs": "3", "Feedback": "wrong, it is 2"}]
    prompt = default.render("old template", examples)
    assert "old template" in prompt and "# Example 1" in prompt and "wrong, it is 2" in prompt
    assert "<curr_param>" not in prompt and "<side_info>" not in prompt


@pytest.mark.parametrize("missing", ["<curr_param>", "<side_info>"])
def test_meta_prompt_missing_placeholder_is_refused(tmp_path, missing):
    path = tmp_path / "mine.md"
    path.write_text("Improve this:\n<curr_param>\nGiven:\n<side_info>\n".replace(missing, "(gone)"))
    with pytest.raises(ConfigError, match=rf"mine\.md lacks the placeholder\(s\) {missing}"):
        load_meta_prompt(str(path))


def test_unknown_meta_prompt_names_the_choices():
    with pytest.raises(ConfigError, match=r"Known: .*compact.*default"):
        load_meta_prompt("no_such_meta")
