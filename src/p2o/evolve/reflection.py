"""Reflection models: who reads the failures and proposes a new template.

`config.reflection` picks one:

- `teacher:<litellm model>` — Teacher-Ref: any LiteLLM model (`teacher:openai/gpt-4.1-mini`). API
  keys come from the environment only (LiteLLM reads `OPENAI_API_KEY`, ...); p2o never writes them
  anywhere and never logs request arguments.
- `self` — the live policy, on the phase's policy server.
- `initial` — the frozen initial checkpoint on its own server (what the paper's Self-Ref used).
- `toy-teacher` — the toy world's scripted teacher (`p2o.toy.teacher`).

A reflector is a callable `prompt -> ReflectionReply`; `as_reflector` wraps any `prompt -> str`
callable (scripted reflectors in tests, your own model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2o.policy import PolicyClient, PolicyServer


class ReflectionError(RuntimeError):
    """The reflection model cannot be used at all (no API key, unknown model, server down)."""


@dataclass
class ReflectionReply:
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Reflector:
    """Base: `__call__(prompt) -> ReflectionReply`; `close()` frees what it owns."""

    name = "reflector"

    def __call__(self, prompt: str) -> ReflectionReply:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to free by default."""

    def __enter__(self) -> Reflector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CallableReflector(Reflector):
    """Wraps a `prompt -> str | ReflectionReply` callable (the toy teacher, a scripted test double)."""

    def __init__(self, fn: Callable[[str], Any], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "name", None) or getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, prompt: str) -> ReflectionReply:
        out = self.fn(prompt)
        if isinstance(out, ReflectionReply):
            return out
        return ReflectionReply(text=str(out))


class LiteLLMReflector(Reflector):
    """Teacher-Ref through LiteLLM. Keys are read by LiteLLM from the environment."""

    def __init__(self, model: str, *, temperature: float, max_tokens: int):
        self.model = model
        self.name = f"teacher:{model}"
        self.temperature = temperature
        self.max_tokens = max_tokens

    def check_environment(self) -> None:
        """Refuse before the phase starts when the provider's API key is not in the environment."""
        import litellm

        try:
            env = litellm.validate_environment(model=self.model)
        except Exception:  # an unknown provider: let the first call tell
            return
        missing = [k for k in env.get("missing_keys", []) if k.endswith("API_KEY")]
        if not env.get("keys_in_environment", True) and missing:
            raise ReflectionError(
                f"reflection {self.name!r} needs {' or '.join(missing)} in the environment "
                "(p2o reads API keys only from the environment and never writes them anywhere)"
            )

    def __call__(self, prompt: str) -> ReflectionReply:
        import litellm

        try:
            resp = litellm.completion(
                model=self.model,
                messages=[{"role": "user", "content": prompt}],
                temperature=self.temperature,
                max_tokens=self.max_tokens,
                caching=False,
            )
        except (litellm.AuthenticationError, litellm.NotFoundError, litellm.BadRequestError) as e:
            # Not worth retrying per proposal. The message is LiteLLM's, which names the model and
            # the missing variable but never a key's value.
            raise ReflectionError(
                f"reflection model {self.model!r} cannot be used: {type(e).__name__}: {str(e)[:300]}. "
                "Set the provider's API key in the environment (e.g. OPENAI_API_KEY) and check the model name."
            ) from e
        choice = resp.choices[0]
        usage = getattr(resp, "usage", None)
        return ReflectionReply(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        )


class PolicyReflector(Reflector):
    """A policy on a server answers the meta-prompt (`self`, `initial`). Owns `server` if given."""

    def __init__(
        self,
        client: PolicyClient,
        *,
        name: str,
        temperature: float,
        max_tokens: int,
        server: PolicyServer | None = None,
    ):
        self.client = client
        self.name = name
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.server = server

    def __call__(self, prompt: str) -> ReflectionReply:
        c = self.client.complete_text(prompt, temperature=self.temperature, max_tokens=self.max_tokens)
        return ReflectionReply(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens)

    def close(self) -> None:
        self.client.close()
        if self.server is not None:
            self.server.stop()


def as_reflector(obj: Any, name: str | None = None) -> Reflector:
    """A `Reflector` from a reflector or any `prompt -> str` callable."""
    if isinstance(obj, Reflector):
        return obj
    if callable(obj):
        return CallableReflector(obj, name)
    raise TypeError(f"a reflection model must be callable (prompt -> str), got {type(obj).__name__}")


def toy_teacher(seed: int = 0) -> Reflector:
    """The toy world's scripted teacher (`p2o.toy.teacher.make_toy_teacher`), its choices seeded."""
    try:
        from p2o.toy.teacher import make_toy_teacher
    except ModuleNotFoundError as e:
        raise ReflectionError("reflection 'toy-teacher' needs the toy world (p2o.toy.teacher)") from e
    return CallableReflector(make_toy_teacher(seed=seed), "toy-teacher")


def make_reflector(
    spec: str,
    *,
    temperature: float,
    max_tokens: int,
    policy: Any = None,
    initial_model: str | Path | None = None,
    log_dir: str | Path | None = None,
    server_timeout: float = 300.0,
    seed: int = 0,
) -> Reflector:
    """Build the reflector named by `config.reflection`.

    `policy` (a `PolicyServer`/`RemotePolicy`) is needed for `self`; `initial_model` (a checkpoint
    directory) and `log_dir` for `initial`, which launches its own `transformers serve`.
    """
    if spec.startswith("teacher:"):
        teacher = LiteLLMReflector(spec[len("teacher:") :], temperature=temperature, max_tokens=max_tokens)
        teacher.check_environment()
        return teacher
    if spec == "toy-teacher":
        return toy_teacher(seed)
    if spec == "self":
        if policy is None:
            raise ReflectionError("reflection 'self' needs the live policy server")
        return PolicyReflector(policy.client(), name="self", temperature=temperature, max_tokens=max_tokens)
    if spec == "initial":
        if initial_model is None or log_dir is None:
            raise ReflectionError(
                "reflection 'initial' needs the initial checkpoint (initial_model) and a log directory"
            )
        server = PolicyServer(
            initial_model, log_dir=log_dir, timeout=server_timeout, log_name="initial_policy_server.log"
        ).start()
        return PolicyReflector(
            server.client(), name="initial", temperature=temperature, max_tokens=max_tokens, server=server
        )
    raise ReflectionError(
        f"unknown reflection model {spec!r}: use teacher:<litellm model>, self, initial, toy-teacher"
    )
