"""Shared fixtures: a tiny random Qwen3 policy built locally, served by a real `transformers serve`.

`build_tiny_policy(path)` makes a word-level tokenizer and a 2-layer Qwen3 (weights drawn wide, so
greedy outputs depend on the prompt) in about a second. `tiny_policy_server` serves it on loopback
for the whole session. `first_word_world` turns it into a task whose hard samples one known template
unlocks: each sample's gold answer is the first word the model says *under that template*, kept only
where the untemplated prompt makes it say something else. No downloads, no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from p2o.tasks import Sample, Task, Verdict

TINY_WORDS = [str(d) for d in range(10)] + [
    "the",
    "answer",
    "is",
    "what",
    "add",
    "twice",
    "first",
    "last",
    "step",
    "by",
    "think",
    "solve",
    "+",
    "-",
    "=",
    "?",
    ".",
]
SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
ROLES = ["system", "user", "assistant"]
UNLOCKING_TEMPLATE = "think step by step"
PIECE_PATTERN = r" ?[^\s]+|\n+| +"


def build_tiny_policy(path: Path, seed: int = 0, init_range: float = 0.5) -> Path:
    """A tiny Qwen3 checkpoint `transformers serve` can load: tokenizer, chat template, weights."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3ForCausalLM

    from p2o.rehearse.standins import tiny_qwen3_config

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # Lossless word-level pieces (a word with or without its leading space, newline runs) and Qwen's
    # ChatML layout, so `transformers serve`'s Qwen3 response parser finds "<|im_start|>assistant\n".
    pieces = [*ROLES, "\n", "\n\n", " "] + [w for t in TINY_WORDS for w in (t, " " + t)]
    vocab = {w: i for i, w in enumerate(SPECIALS + pieces)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|im_end|>",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    fast.save_pretrained(path)
    eos = vocab["<|im_end|>"]
    cfg = tiny_qwen3_config(len(vocab), pad=0, eos=eos, max_positions=512, init_range=init_range)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=0, do_sample=False)
    model.save_pretrained(path)
    return path


def first_word_verifier(completion: str, reference: str) -> Verdict:
    words = completion.split()
    got = words[0] if words else ""
    if got == reference:
        return Verdict(1.0, f"Your final answer {got} is correct.", got)
    return Verdict(
        0.0, f"Your final answer {got or '(none)'} is incorrect. The correct answer is {reference}.", got
    )


def first_word_task() -> Task:
    """Prompt = the problem as the user message; correct = the completion's first word is the answer."""
    return Task(
        name="first-word",
        build_messages=lambda problem: [{"role": "user", "content": problem}],
        verifier=first_word_verifier,
    )


@dataclass
class FirstWordWorld:
    task: Task
    samples: list[Sample]
    template: str


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory) -> Path:
    return build_tiny_policy(tmp_path_factory.mktemp("tiny") / "policy")


@pytest.fixture(scope="session")
def tiny_policy_server(tiny_policy, tmp_path_factory):
    from p2o.policy import PolicyServer

    with PolicyServer(tiny_policy, log_dir=tmp_path_factory.mktemp("server"), timeout=180) as server:
        yield server


@pytest.fixture(scope="session")
def first_word_world(tiny_policy_server) -> FirstWordWorld:
    from p2o.templates import render_augmented

    task = first_word_task()
    samples = []
    with tiny_policy_server.client() as client:
        for a in range(10):
            for b in range(10):
                problem = f"what {a} + {b} ?"
                x = task.build_messages(problem)

                def first(template: str, x=x) -> str:
                    text = client.chat(render_augmented(x, template), max_tokens=2).text.split()
                    return text[0] if text else ""

                unlocked, plain = first(UNLOCKING_TEMPLATE), first("")
                if unlocked and unlocked != plain:
                    samples.append(Sample(f"s{a}{b}", problem, unlocked))
                if len(samples) == 16:
                    break
            if len(samples) == 16:
                break
    assert len(samples) >= 8, "the tiny policy should be prompt-sensitive enough for 8 hard samples"
    return FirstWordWorld(task, samples, UNLOCKING_TEMPLATE)


# The suite's longest test (~7-9 min on 2 cores): it starts first so the others run beside it.
LONGEST = "test_rehearsal_of_every_paper_recipe"


def pytest_collection_modifyitems(config, items):
    """The longest test first, then the other slow ones, then the rest, each group in file order: with
    several workers (`make test` runs two) the long tests start at once instead of last."""
    items.sort(key=lambda item: (item.name != LONGEST, item.get_closest_marker("slow") is None))
