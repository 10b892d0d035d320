"""A tiny random Qwen3 policy and task for trainer tests (built locally in a second; no downloads).

The verifier checks the first word of the completion; a random model is almost always wrong, so
every sample is hard, which is what trainer tests need.
"""

from __future__ import annotations

from pathlib import Path

import torch

from p2o.tasks import Sample, Task, Verdict

WORDS = [str(d) for d in range(10)] + ["+", "think", "step", "by", "HINT", "answer", "is", "what"]
TEMPLATE = "HINT think step by step"


def build_tiny_model(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

    from p2o.rehearse.standins import tiny_qwen3_config

    specials = ["<pad>", "<eos>", "<unk>", "<user>", "<assistant>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    fast.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<assistant> {% endif %}"
    )
    fast.save_pretrained(path)
    torch.manual_seed(0)
    cfg = tiny_qwen3_config(len(vocab), pad=0, eos=1, bos=1, max_positions=64)
    model = Qwen3ForCausalLM(cfg)
    model.generation_config.eos_token_id = 1
    model.generation_config.pad_token_id = 0
    model.save_pretrained(path)
    return path


def tiny_task() -> Task:
    def verifier(completion: str, reference: str) -> Verdict:
        got = completion.split()[:1]
        ok = got == [reference]
        return Verdict(float(ok), f"Your final answer {got} is {'correct' if ok else 'incorrect'}.")

    return Task(name="tiny", build_messages=lambda q: [{"role": "user", "content": q}], verifier=verifier)


def tiny_samples(n: int = 4) -> list[Sample]:
    return [Sample(f"s{i}", f"what is {i} + {i}", str((2 * i) % 10)) for i in range(n)]
