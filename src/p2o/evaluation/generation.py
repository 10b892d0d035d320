"""Generation backends for evaluation: in-process transformers, the vLLM offline engine, or a server.

All three take chat messages (already rendered with T(x, z) when a template is measured) and return,
per prompt, `n` completions. Temperature 0 means greedy decoding. Sampling is pure temperature
sampling with optional top-p (no top-k), as the paper's evaluation and vLLM's defaults do.

- `TransformersGenerator`: batched `model.generate` with left padding over the tokenizer's chat
  template (with the task's `chat_template_kwargs`, e.g. `enable_thinking: False` for Qwen3); seeded.
  Runs anywhere, including CPU; it is what the toy world and the tests use.
- `VLLMGenerator`: `vllm.LLM(...).chat(...)`, one call per benchmark (vLLM batches internally).
- `ServerGenerator`: an OpenAI-compatible server (`vllm serve`, `trl vllm-serve`, `transformers
  serve`) through `p2o.policy.PolicyClient`, one request per completion from a thread pool. A
  templated evaluation runs there as DSPy calls of the template program (`generate_program`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from p2o.errors import ConfigError
from p2o.policy.local import generate_batched
from p2o.policy.pool import thread_map
from p2o.tasks.base import Messages

Progress = Callable[[int], None]  # called with the number of completions just finished


class GenerationError(RuntimeError):
    """A backend that cannot be started or used; the message says which and what to do."""


@dataclass
class Generation:
    """One completion: its text, why it stopped ("stop" or "length") and its length in tokens."""

    text: str
    finish_reason: str | None = None
    tokens: int = 0


class Generator(Protocol):
    """What `evaluate` needs from a backend."""

    label: str

    def generate(
        self,
        prompts: list[Messages],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        seed: int,
        chat_template_kwargs: dict[str, Any],
        progress: Progress | None = None,
    ) -> list[list[Generation]]: ...

    def close(self) -> None: ...


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- transformers


class TransformersGenerator:
    """Batched `model.generate` in this process.

    `batch_size` counts sequences (prompts × n) per forward pass. Prompts are sorted by length before
    batching, so little compute goes to padding; results come back in the input order.
    """

    def __init__(self, model: Any, tokenizer: Any, *, label: str = "model", batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.label = label
        self.batch_size = max(1, int(batch_size))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        label: str | None = None,
        batch_size: int = 32,
        device: str | None = None,
        dtype: str = "auto",
    ) -> TransformersGenerator:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        except (OSError, ValueError) as e:
            raise GenerationError(
                f"cannot load model {str(path)!r} with transformers: {e}. Give a local checkpoint directory "
                "or a hub id this machine can download."
            ) from e
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device).eval()
        return cls(model, tokenizer, label=label or Path(str(path)).name, batch_size=batch_size)

    def close(self) -> None:
        self.model = None

    def _render(self, messages: Messages, kwargs: dict[str, Any]) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise GenerationError(
                f"the tokenizer of {self.label!r} has no chat template; evaluation renders prompts as chats"
            )
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **kwargs
        )

    def generate(
        self,
        prompts: list[Messages],
        *,
        n: int,
        temperature: float,
        top_p: float = 1.0,
        max_tokens: int,
        seed: int = 0,
        chat_template_kwargs: dict[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> list[list[Generation]]:
        import torch

        tok = self.tokenizer
        texts = [self._render(m, dict(chat_template_kwargs or {})) for m in prompts]
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        torch.manual_seed(seed)
        try:
            rows = generate_batched(
                self.model,
                tok,
                ids,
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                batch_size=self.batch_size,
                progress=progress,
            )
        except ConfigError as e:  # no end-of-sequence token
            raise GenerationError(f"{self.label}: {e}") from e
        return [[Generation(text, finish, k) for text, finish, k in row] for row in rows]


# ---------------------------------------------------------------- vLLM offline engine


class VLLMGenerator:
    """The vLLM offline engine (`pip install -e ".[vllm]"`, a CUDA GPU)."""

    def __init__(
        self,
        path: str | Path,
        *,
        label: str | None = None,
        seed: int = 0,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "auto",
    ):
        try:
            import vllm
        except ImportError as e:
            raise GenerationError(
                "--backend vllm: vllm is not installed. Install it (pip install -e '.[vllm]', vLLM 0.22-0.31, "
                "needs a CUDA GPU) or use --backend transformers."
            ) from e
        kwargs: dict[str, Any] = {
            "model": str(path),
            "seed": seed,
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "dtype": dtype,
        }
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.label = label or Path(str(path)).name
        self._vllm = vllm
        self.llm = vllm.LLM(**kwargs)

    def close(self) -> None:
        self.llm = None

    def generate(
        self,
        prompts: list[Messages],
        *,
        n: int,
        temperature: float,
        top_p: float = 1.0,
        max_tokens: int,
        seed: int = 0,
        chat_template_kwargs: dict[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> list[list[Generation]]:
        params = self._vllm.SamplingParams(
            n=n,
            temperature=float(temperature),
            top_p=float(top_p) if temperature > 0 else 1.0,
            max_tokens=max_tokens,
            seed=seed,
        )
        outputs = self.llm.chat(
            prompts, params, use_tqdm=True, chat_template_kwargs=dict(chat_template_kwargs or {})
        )
        result = [
            [Generation(o.text, o.finish_reason, len(o.token_ids)) for o in req.outputs] for req in outputs
        ]
        if progress is not None:
            progress(sum(len(r) for r in result))
        return result


# ---------------------------------------------------------------- OpenAI-compatible server


class ServerGenerator:
    """An OpenAI-compatible server someone runs (`vllm serve`, `trl vllm-serve`, `transformers serve`).

    `model` is the name the server serves the checkpoint under. `kind` is 'vllm' / 'openai' (plain
    OpenAI sampling fields) or 'transformers' (`transformers serve` samples only when asked with a
    generation config, which `PolicyClient` sends).
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        label: str | None = None,
        kind: str = "vllm",
        api_key: str | None = None,
        num_threads: int = 16,
        timeout: float = 3600.0,
    ):
        from p2o.policy import RemotePolicy

        backend = "transformers" if kind == "transformers" else "vllm"
        self.policy = RemotePolicy(url, model, backend=backend, api_key=api_key)
        self.client = self.policy.client(timeout=timeout)
        self.label = label or Path(model).name
        self.num_threads = max(1, num_threads)

    def close(self) -> None:
        self.client.close()

    def generate(
        self,
        prompts: list[Messages],
        *,
        n: int,
        temperature: float,
        top_p: float = 1.0,
        max_tokens: int,
        seed: int = 0,
        chat_template_kwargs: dict[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> list[list[Generation]]:
        self.client.chat_template_kwargs = dict(chat_template_kwargs or {})
        extra = {"top_p": float(top_p)} if temperature > 0 and top_p < 1 else {}

        def one(i: int) -> Generation:
            c = self.client.chat(prompts[i], temperature=temperature, max_tokens=max_tokens, **extra)
            return Generation(c.text, c.finish_reason, c.completion_tokens)

        return self._fan_out(one, len(prompts), n, progress)

    def generate_program(
        self,
        predictor: Any,
        inputs: list[dict[str, Any]],
        *,
        adapter: Any,
        output_field: str,
        n: int,
        temperature: float,
        top_p: float = 1.0,
        max_tokens: int,
        seed: int = 0,
        chat_template_kwargs: dict[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> list[list[Generation]]:
        """`n` completions per input as DSPy calls: `predictor` through `adapter` to the client's
        `dspy.LM`, as a GEPA phase runs a candidate. The text is the prediction's `output_field`;
        finish reason and tokens come from the LM history entry of each call."""
        self.client.chat_template_kwargs = dict(chat_template_kwargs or {})
        extra = {"top_p": float(top_p)} if temperature > 0 and top_p < 1 else {}

        def one(i: int) -> Generation:
            prediction, c = self.client.call(
                predictor, inputs[i], adapter=adapter, temperature=temperature, max_tokens=max_tokens, **extra
            )
            return Generation(str(prediction.get(output_field) or ""), c.finish_reason, c.completion_tokens)

        return self._fan_out(one, len(inputs), n, progress)

    def _fan_out(
        self, one: Callable[[int], Generation], count: int, n: int, progress: Progress | None
    ) -> list[list[Generation]]:
        """`one(i)` n times for each of `count` prompts, from the thread pool, in order. The first
        server error stops the benchmark with its message."""
        lock = threading.Lock()

        def run(i: int) -> Generation:
            g = one(i)
            if progress is not None:
                with lock:
                    progress(1)
            return g

        return thread_map(run, range(count), threads=self.num_threads, repeat=n)
