"""The toy world, its task and verifier, and the scripted teacher (no model needed: milliseconds)."""

import random

import pytest

from p2o.tasks import get_task, get_verifier, list_tasks, list_verifiers
from p2o.toy import world as W
from p2o.toy.task import extract_answer
from p2o.toy.teacher import ToyTeacher, infer_rule, make_toy_teacher, parse_examples, toy_instructions


def test_rules_are_digit_wise():
    assert W.apply_rule("add", "347", "219") == "556"
    assert W.apply_rule("sub", "347", "219") == "138"
    assert W.apply_rule("mul", "347", "219") == "643"
    assert W.apply_rule("max", "347", "219") == "349"
    assert W.apply_rule("min", "347", "219") == "217"
    assert W.apply_rule("absdiff", "347", "219") == "132"
    assert W.apply_rule("first", "347", "219") == "347"
    assert len([r for r in W.RULES.values() if r.hideable]) >= 6
    assert all(len(r.paraphrases) >= 3 for r in W.RULES.values())


def test_seeds_hide_different_rules_and_roles_are_disjoint():
    worlds = [W.make_world(s) for s in range(4)]
    # Each seed hides its own rule behind each hard symbol (and picks its own symbols).
    assert len({tuple(sorted(w.hard.items())) for w in worlds}) == 4
    assert len({tuple(w.hard.values()) for w in worlds}) > 1
    # The guessable rule (mul: zeros win 2% of the time) never hides behind a hard operator.
    assert all(W.GUESSABLE in w.easy.values() for w in [W.make_world(s) for s in range(12)])
    # With other sizes, a hard operator can hide another set of rules.
    assert {tuple(sorted(W.make_world(s, n_easy=2).hard.values())) for s in range(12)} != {
        tuple(sorted(worlds[0].hard.values()))
    }
    for w in worlds:
        assert not set(w.easy) & set(w.hard) and not set(w.unknown) & set(w.operators)
        # Hard operators hide the familiar operators' rules (one each), never an easy operator's.
        assert not set(w.familiar) & (set(w.easy) | set(w.hard) | set(w.unknown))
        assert sorted(w.hard.values()) == sorted(w.familiar.values())
        assert not set(w.easy.values()) & set(w.hard.values())
        assert all(W.RULES[r].hideable for r in w.hard.values())
        assert w.kind_of(next(iter(w.familiar))) == "familiar"
    # ... in an order the seed decides.
    worlds = [W.make_world(s) for s in range(12)]
    assert any(list(w.hard.values()) != list(w.familiar.values()) for w in worlds)
    w5 = W.make_world(5, n_easy=4, n_hard=3)
    assert len(w5.hard) == 3 and set(w5.hard.values()) == set(w5.familiar.values()) and len(w5.familiar) == 2
    with pytest.raises(ValueError, match="n_easy must be < 6"):
        W.make_world(0, n_easy=6)
    assert W.make_world(3) == W.make_world(3)


def test_problem_parsing_tolerates_spaces():
    assert W.parse_problem("Solve: 3 4 7 ⊕ 2 1 9 please") == ("347", "⊕", "219")
    assert W.parse_problem("no problem here") is None
    assert extract_answer("5 5 6<|im_end|>") == "556"
    assert extract_answer("") is None


def test_verifier_feedback_names_the_gold_answer():
    v = get_verifier("toy")
    ok, wrong, none = v("556", "556"), v("5 5 7", "556"), v("I do not know", "556")
    assert ok.score == 1.0 and ok.feedback == "Your final answer 556 is correct."
    assert (
        wrong.score == 0.0
        and wrong.feedback == "Your final answer 557 is incorrect. The correct answer is 556."
    )
    assert none.score == 0.0 and none.feedback == "No final answer was found. The correct answer is 556."
    assert "toy" in list_verifiers()


def test_task_splits_are_stable_disjoint_and_labelled():
    assert "toy" in list_tasks()
    task = get_task("toy", seed=1, n_train=64, n_test=32)
    train, test = task.splits("train"), task.splits("test")
    assert len(train) == 64 and len(test) == 32
    assert train[5].sample_id == "toy-s1-train-000005"
    assert [s.sample_id for s in task.splits("train")] == [s.sample_id for s in train]
    assert not {s.problem for s in train} & {s.problem for s in test}
    assert all(W.is_held_out(s.problem) for s in test) and not any(W.is_held_out(s.problem) for s in train)
    hard = task.splits("test_hard")
    assert len(hard) == 32 and all(s.meta["kind"] == "hard" for s in hard)
    assert {s.sample_id for s in test} <= {s.sample_id for s in hard + task.splits("test_easy")}
    assert {s.meta["kind"] for s in train} == {"easy", "hard"}
    # Easy problems use every operator whose rule the policy knows, the hard operators' twins too.
    world = W.make_world(1)
    easy_ops = {s.meta["operator"] for s in task.splits("test_easy")}
    assert easy_ops == set(world.known) and set(world.familiar) <= easy_ops
    assert {s.meta["operator"] for s in hard} == set(world.hard)
    for s in train[:10]:
        assert task.verifier(s.answer, s.answer).correct
        assert task.build_messages(s.problem) == [{"role": "user", "content": s.problem}]
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        task.splits("dev")


def _gepa_prompt(examples, instruction=""):
    """A reflection prompt shaped like GEPA's default meta-prompt."""
    blocks = []
    for i, (problem, output, feedback) in enumerate(examples, 1):
        blocks.append(
            f"# Example {i}\n## Inputs\n{instruction}\n\n{problem}\n\n## Generated Outputs\n{output}\n\n"
            f"## Feedback\n{feedback}\n"
        )
    return (
        f"I provided an assistant with the following instructions to perform a task for me:\n```\n{instruction}\n```\n\n"
        "The following are examples ...:\n```\n"
        + "\n\n".join(blocks)
        + "\n```\n\nProvide the new instructions within ``` blocks."
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_teacher_recovers_the_hidden_rule_from_three_examples(seed):
    world = W.make_world(seed)
    rng = random.Random(seed)
    verifier = get_verifier("toy")
    teacher = ToyTeacher(noise=0.0, seed=seed)
    for op, rule in world.hard.items():
        examples = []
        for _ in range(3):
            p = world.problem(rng, op)
            wrong = "".join(str(rng.randint(0, 9)) for _ in range(world.digits))
            examples.append((p, wrong, verifier(wrong, world.answer(p)).feedback))
        out = teacher(_gepa_prompt(examples, instruction="Think carefully about what the sign means."))
        assert out.count("```") == 2
        instruction = out.split("```")[1].strip()
        assert W.rule_of_instruction(instruction) == rule, (op, rule, out)
        assert teacher.history[-1].kind == "inferred"


def test_teacher_focuses_on_failures_and_pairs_without_headers():
    world = W.make_world(0)
    rng = random.Random(0)
    (op_ok, _), (op_bad, rule_bad) = list(world.hard.items())[:2]
    ok = world.problem(rng, op_ok)
    while True:  # two failed examples that only the hidden rule explains
        bad = [world.problem(rng, op_bad) for _ in range(2)]
        if [
            r
            for r in W.RULES
            if all(W.apply_rule(r, *W.parse_problem(b)[::2]) == world.answer(b) for b in bad)
        ] == [rule_bad]:
            break
    examples = [
        parse_examples(
            _gepa_prompt([(ok, world.answer(ok), f"Your final answer {world.answer(ok)} is correct.")])
        )[0]
    ]
    examples += parse_examples(
        _gepa_prompt(
            [
                (b, "000", f"Your final answer 000 is incorrect. The correct answer is {world.answer(b)}.")
                for b in bad
            ]
        )
    )
    assert infer_rule(examples) == rule_bad
    flat = " ".join(f"{b} -> The correct answer is {world.answer(b)}." for b in bad)
    assert [e.gold for e in parse_examples(flat)] == [world.answer(b) for b in bad]


def test_teacher_noise_gives_wrong_or_vague_rules():
    world = W.make_world(0)
    rng = random.Random(1)
    op, rule = next(iter(world.hard.items()))
    probs = [world.problem(rng, op) for _ in range(3)]
    prompt = _gepa_prompt([(p, "000", f"The correct answer is {world.answer(p)}.") for p in probs])
    teacher = make_toy_teacher(noise=1.0, seed=3)
    kinds = {teacher.propose(prompt).kind for _ in range(20)}
    assert kinds == {"wrong", "vague"}
    assert all(W.rule_of_instruction(p.instruction) != rule for p in teacher.history)
    assert ToyTeacher(noise=0.0)("nothing to learn from").count("```") == 2
    assert "scripted" in repr(teacher)
    langs = toy_instructions()
    assert set(W.RULES) <= set(langs) and langs["vague"]
    with pytest.raises(ValueError, match="noise"):
        ToyTeacher(noise=1.5)


@pytest.mark.parametrize("meta_prompt", [None, "toy.md", "compact.md"])
def test_teacher_reads_gepas_rendering_of_the_reflective_dataset(meta_prompt):
    """Records shaped as p2o.evolve's adapter makes them, rendered by GEPA's own prompt renderer."""
    from pathlib import Path

    from gepa.strategies.instruction_proposal import InstructionProposalSignature

    template = None
    if meta_prompt is not None:
        path = Path(__file__).parents[1] / "programs" / "meta_prompts" / meta_prompt
        if not path.is_file():
            pytest.skip(f"{path} is not there")
        template = path.read_text()
    world = W.make_world(4)
    rng = random.Random(4)
    op, rule = sorted(world.hard.items())[0]
    records = []
    for i in range(3):
        p = world.problem(rng, op)
        gold = world.answer(p)
        feedback = f"{i} of 4 sampled answers were correct. First answer: Your final answer 000 is incorrect. The correct answer is {gold}."
        records.append({"Inputs": {"problem": p}, "Generated Outputs": "000", "Feedback": feedback})
    prompt = InstructionProposalSignature.prompt_renderer(
        {"current_instruction_doc": "", "dataset_with_feedback": records, "prompt_template": template}
    )
    reply = ToyTeacher(noise=0.0)(prompt)
    new = InstructionProposalSignature.output_extractor(reply)["new_instruction"]
    assert W.rule_of_instruction(new) == rule
