"""The live policy in this process: batched `model.generate` on the training model itself.

`policy_server: trainer` runs a phase's rollouts here instead of on a server: the trainer hands its
own model (`LocalPolicy`), and each GEPA evaluation — a minibatch or the whole dev set under one
template — is one batched generation (`LocalClient.chat_many`) instead of one HTTP request per
rollout. No checkpoint is written and no server process boots or competes for the CPU; the weights
are the trainer's at that step, exactly. What it cannot do: serve a policy whose parameters are
sharded over processes (FSDP, DeepSpeed ZeRO-3); the trainer refuses that combination up front.

`generate_batched` is the one left-padded batched generation loop; `p2o.evaluation`'s
`TransformersGenerator` uses it too.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from p2o.errors import ConfigError
from p2o.policy.client import Completion, Usage
from p2o.tasks.base import Messages

Progress = Callable[[int], None]  # called with the number of completions just finished


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The token ids that end a completion: the model's generation config's, then the tokenizer's."""
    ids: list[int] = []
    cfg = getattr(model, "generation_config", None)
    value = getattr(cfg, "eos_token_id", None)
    for v in value if isinstance(value, list | tuple) else [value]:
        if v is not None and v not in ids:
            ids.append(int(v))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    if not ids:
        raise ConfigError("the model has no end-of-sequence token (generation_config.eos_token_id)")
    return ids


def sampling_kwargs(temperature: float, top_p: float = 1.0) -> dict[str, Any]:
    """`generate` keyword arguments: greedy at temperature 0, else pure temperature (and top-p)
    sampling with no top-k (what vLLM and the paper's evaluation do)."""
    if temperature == 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p), "top_k": 0}


def generate_batched(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    *,
    n: int,
    temperature: float,
    top_p: float = 1.0,
    max_tokens: int,
    batch_size: int,
    progress: Progress | None = None,
) -> list[list[tuple[str, str, int]]]:
    """`n` completions per prompt as (text, finish reason "stop"|"length", tokens), in input order.

    Prompts are sorted by length and left-padded in batches of about `batch_size` sequences
    (prompts × n), so little compute goes to padding. Sampling uses torch's current RNG: seed it (or
    fork it) around the call.
    """
    import torch

    if temperature == 0 and n != 1:
        raise ValueError("greedy decoding (temperature 0) gives one completion per prompt: use n=1")
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    device = next(model.parameters()).device
    per_batch = max(1, batch_size // n)
    out: list[list[tuple[str, str, int]]] = [[] for _ in prompt_ids]
    for start in range(0, len(order), per_batch):
        idx = order[start : start + per_batch]
        width = max(len(prompt_ids[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(prompt_ids[i]) :] = torch.tensor(prompt_ids[i])
            attention[row, width - len(prompt_ids[i]) :] = 1
        with torch.no_grad():
            gen = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_tokens,
                num_return_sequences=n,
                eos_token_id=eos,
                pad_token_id=pad,
                use_cache=True,
                **sampling_kwargs(temperature, top_p),
            )
        for row, completion in enumerate(gen[:, width:].tolist()):
            out[idx[row // n]].append(_cut(completion, eos, tokenizer))
        if progress is not None:
            progress(len(idx) * n)
    return out


def _cut(tokens: list[int], eos: list[int], tokenizer: Any) -> tuple[str, str, int]:
    for j, t in enumerate(tokens):
        if t in eos:
            return tokenizer.decode(tokens[:j], skip_special_tokens=True), "stop", j + 1
    return tokenizer.decode(tokens, skip_special_tokens=True), "length", len(tokens)


@contextlib.contextmanager
def generation_mode(model: Any, seed: int) -> Iterator[None]:
    """Eval mode (no dropout) and a private RNG seeded with `seed` for the duration; the model's
    training mode and torch's global RNG state (CPU and CUDA) are restored afterwards, so a phase
    leaves training's random stream exactly as it found it."""
    import torch

    was_training = bool(getattr(model, "training", False))
    device = next(model.parameters()).device
    # Only the model's own GPU: forking every visible one would open a context on each.
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        model.eval()
        try:
            yield
        finally:
            if was_training:
                model.train()


class LocalClient:
    """Chat completions from a model in this process: the `PolicyClient` calls a phase makes
    (`chat`, `complete_text`) plus `chat_many`, one batched generation for many prompts."""

    backend = "trainer"

    def __init__(
        self,
        policy: LocalPolicy,
        *,
        chat_template_kwargs: dict[str, Any] | None = None,
    ):
        self.policy = policy
        self.base_url = policy.base_url
        self.model = policy.model_name
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.usage = Usage()

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prompt_ids(self, messages: Messages) -> list[int]:
        tok = self.policy.tokenizer
        if getattr(tok, "chat_template", None) is None:
            raise ConfigError(
                f"the tokenizer of {self.model!r} has no chat template; phases render prompts as chats"
            )
        text = tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
        )
        return tok(text, add_special_tokens=False)["input_ids"]

    def chat_many(
        self, prompts: list[Messages], *, n: int = 1, temperature: float = 0.0, max_tokens: int = 512
    ) -> list[list[Completion]]:
        """`n` completions for each of `prompts`, generated in batches of the policy's `batch_size`
        sequences. Counts one request per completion in `usage`, as a server client would."""
        if not prompts:
            return []
        start = time.perf_counter()
        ids = [self._prompt_ids(m) for m in prompts]
        # Greedy completions of one prompt are all the same: generate one and repeat it.
        k = 1 if temperature == 0 else n
        rows = self.policy.generate(ids, n=k, temperature=temperature, max_tokens=max_tokens)
        rows = [row * (n // k) for row in rows]
        out = [
            [
                Completion(text, finish, prompt_tokens=len(p), completion_tokens=used)
                for text, finish, used in row
            ]
            for p, row in zip(ids, rows, strict=True)
        ]
        per = (time.perf_counter() - start) / max(1, len(prompts) * n)
        for row in out:
            for c in row:
                self.usage.add(c, per)
        return out

    def chat(
        self, messages: Messages, *, temperature: float = 0.0, max_tokens: int = 512, **_: Any
    ) -> Completion:
        return self.chat_many([messages], n=1, temperature=temperature, max_tokens=max_tokens)[0][0]

    def complete_text(self, prompt: str, *, temperature: float, max_tokens: int) -> Completion:
        """A single user message → completion (how `self` reflection calls the policy)."""
        return self.chat(
            [{"role": "user", "content": prompt}], temperature=temperature, max_tokens=max_tokens
        )


class LocalPolicy:
    """The training model as a phase's policy (`policy_server: trainer`): the `Policy` interface
    (`base_url`, `model_name`, `backend`, `client`, `check_alive`, `stop`) over batched in-process
    generation. `name` identifies the weights (the trainer passes model and step: a resumed phase
    checks it); `seed` seeds each generation (with a counter), and torch's global RNG is left as it
    was. Calls are serialized: one generation at a time."""

    backend = "trainer"
    base_url = "in-process"
    log_path: Path | None = None

    def __init__(self, model: Any, tokenizer: Any, *, name: str, batch_size: int = 64, seed: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = name
        self.batch_size = max(1, int(batch_size))
        self.seed = int(seed)
        self._calls = 0
        self._lock = threading.Lock()

    def client(self, **kwargs: Any) -> LocalClient:
        return LocalClient(self, chat_template_kwargs=kwargs.get("chat_template_kwargs"))

    def check_alive(self) -> None:
        """Nothing to check: the model lives in this process."""

    def stop(self) -> None:
        pass

    def generate(
        self, prompt_ids: list[list[int]], *, n: int, temperature: float, max_tokens: int
    ) -> list[list[tuple[str, str, int]]]:
        with self._lock:
            self._calls += 1
            with generation_mode(self.model, self.seed * 1_000_003 + self._calls):
                return generate_batched(
                    self.model,
                    self.tokenizer,
                    prompt_ids,
                    n=n,
                    temperature=temperature,
                    max_tokens=max_tokens,
                    batch_size=self.batch_size,
                )
