"""The toy policy's tokenizer, chat template and Qwen3 configuration.

The tokenizer is word-level but lossless on the world's text: a piece is a word or a punctuation
mark with its leading space, one digit, a run of newlines or a run of spaces, and the decoder
concatenates pieces. So `decode(encode(text)) == text` for everything the world writes, the
"\\n\\n" between template and problem included, and answers decode as plain digits ("5562").
Words outside the world's language become `<unk>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from p2o.toy import world as W

PAD, UNK, IM_START, IM_END = "<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, UNK, IM_START, IM_END)
ROLES = ("system", "user", "assistant", "tool")

# Qwen's ChatML layout without the thinking block: what TRL, `transformers serve` and vLLM render.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# One piece per word / punctuation mark (with its leading space), digit, newline run or space run.
PIECE_PATTERN = r" ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]|\n+| +|\s"
_PIECE_RE = re.compile(PIECE_PATTERN)


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """`CHAT_TEMPLATE` in Python (the build renders thousands of prompts; a test checks they agree)."""
    out = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return out + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def vocabulary() -> list[str]:
    """Every piece the world's text can produce, in a fixed order (special tokens first)."""
    texts = [*W.corpus(), *ROLES, "\n", "\n\n", "\n\n\n", " ", "  "]
    pieces: set[str] = set()
    for text in texts:
        pieces.update(_PIECE_RE.findall(text))
        # A sentence may start a message (no space) or follow another one (leading space).
        pieces.update(p.lstrip(" ") for p in _PIECE_RE.findall(text) if p.strip())
        pieces.update(" " + p for p in _PIECE_RE.findall(text) if p.strip() and not p.startswith(" "))
    for d in "0123456789":
        pieces.update((d, " " + d))
    for s in W.SYMBOLS:
        pieces.update((s, " " + s))
    for p in "=?.,:;!()'\"-+*/":
        pieces.update((p, " " + p))
    return [*SPECIAL_TOKENS, *sorted(pieces)]


def build_tokenizer():
    """A fast tokenizer (`PreTrainedTokenizerFast`) with the toy vocabulary and chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=IM_END,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
        padding_side="left",
    )


@dataclass(frozen=True)
class ModelSize:
    """Qwen3 dimensions of the toy policy."""

    hidden_size: int = 128
    intermediate_size: int = 384
    # Two layers learn the digit-wise rules in fewer steps than four (and each step is cheaper).
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    max_position_embeddings: int = 256


def build_model(tokenizer: Any, size: ModelSize, seed: int = 0):
    """A freshly initialised Qwen3ForCausalLM sized by `size`, with eos/pad ids set for generation."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads,
        head_dim=size.head_dim,
        max_position_embeddings=size.max_position_embeddings,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        use_cache=True,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        max_new_tokens=16,
    )
    return model
