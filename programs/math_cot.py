"""Math chain-of-thought: the policy reasons step by step and boxes its final answer.

The evolved template is the predictor's instruction; p2o renders it as x̃ = T(x, z) (template, blank
line, the task's original user message). Seeds: `empty` (the paper's: GEPA starts from no template at
all) and `stepwise` (a short generic reasoning prompt, for runs that want a non-empty start):
`program: math_cot@stepwise`.
"""

import dspy


class SolveMath(dspy.Signature):
    problem: str = dspy.InputField(desc="A competition math problem.")
    completion: str = dspy.OutputField(
        desc="The full response: reasoning, then the final answer in \\boxed{}."
    )


SEEDS = {
    "empty": "",
    "stepwise": (
        "Solve the problem step by step. First restate what is asked and list the given quantities. "
        "Work through the computation carefully, checking each intermediate result. Before answering, "
        "verify the result against the conditions of the problem. Put the final answer in \\boxed{}."
    ),
}


class MathCoT(dspy.Module):
    def __init__(self):
        super().__init__()
        self.solve = dspy.Predict(SolveMath)

    def forward(self, problem: str):
        return self.solve(problem=problem)


program = MathCoT
