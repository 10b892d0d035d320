"""The toy world's template program: the instruction that tells the tiny policy which rule to apply.

Seed: the empty template (as in the paper). A good template for a hard toy sample names the operator's
rule; the toy teacher (`reflection: toy-teacher`) proposes such instructions from the feedback.
"""

import dspy


class ToyProblem(dspy.Signature):
    problem: str = dspy.InputField(desc="A toy-world problem: an operator applied to digit strings.")
    completion: str = dspy.OutputField(desc="The policy's answer.")


SEEDS = {"empty": ""}


class ToyProgram(dspy.Module):
    def __init__(self):
        super().__init__()
        self.solve = dspy.Predict(ToyProblem)

    def forward(self, problem: str):
        return self.solve(problem=problem)


program = ToyProgram
