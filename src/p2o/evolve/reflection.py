"""Reflection models: who reads the failures and proposes a new template.

`config.reflection` picks one:

- `teacher:<litellm model>` — Teacher-Ref: any LiteLLM model (`teacher:openai/gpt-4.1-mini`). API
  keys come from the environment only (LiteLLM reads `OPENAI_API_KEY`, ...); p2o never writes them
  anywhere and never logs request arguments.
- `self` — the live policy, on the phase's policy server.
- `initial` — the frozen initial checkpoint on its own server (what the paper's Self-Ref used).
- any name a plug-in registers with `p2o.plugins.register_reflector` (a scripted teacher, your own model).

A reflector is a callable `prompt -> ReflectionReply`; `as_reflector` wraps any `prompt -> str`
callable (scripted reflectors in tests, your own model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2o.plugins import list_reflectors, reflector_factory
from p2o.policy import PolicyClient, PolicyServer


class ReflectionError(RuntimeError):
    """The reflection model cannot be used. `fatal`: a configuration problem that no retry fixes (no
    key, a refused key, an unknown model or provider, an unreachable endpoint): the run must stop.
    Not fatal: it kept failing for a passing reason (rate limits, server errors, time-outs) and only
    this phase is lost."""

    def __init__(self, message: str, *, fatal: bool = True):
        super().__init__(message)
        self.fatal = fatal


class TransientReflectionError(RuntimeError):
    """One reflection call failed for a passing reason after its retries (429, 5xx, time-out)."""


@dataclass
class ReflectionReply:
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # the provider's price as LiteLLM knows it; None = unknown


class Reflector:
    """Base: `__call__(prompt) -> ReflectionReply`; `close()` frees what it owns."""

    name = "reflector"

    def __call__(self, prompt: str) -> ReflectionReply:
        raise NotImplementedError

    def preflight(self) -> None:
        """Check, with one short request, that the model answers; raise `ReflectionError` if not."""
        self(PREFLIGHT_PROMPT)

    def close(self) -> None:
        """Nothing to free by default."""

    def __enter__(self) -> Reflector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


PREFLIGHT_PROMPT = "Reply with the single word OK."


class CallableReflector(Reflector):
    """Wraps a `prompt -> str | ReflectionReply` callable (a scripted teacher or test double)."""

    def __init__(self, fn: Callable[[str], Any], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "name", None) or getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, prompt: str) -> ReflectionReply:
        out = self.fn(prompt)
        if isinstance(out, ReflectionReply):
            return out
        return ReflectionReply(text=str(out))

    def preflight(self) -> None:
        """A local callable needs no check (calling it could consume a scripted reply)."""


def quiet_litellm() -> None:
    """LiteLLM prints provider lists and debug hints on every failed call; p2o reports failures
    itself, once, with the model's own message."""
    import logging

    import litellm

    litellm.suppress_debug_info = True
    litellm.set_verbose = False
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.ERROR)


class LiteLLMReflector(Reflector):
    """Teacher-Ref through LiteLLM, to any provider or OpenAI-compatible endpoint.

    Args:
        model: a LiteLLM model string (`openai/gpt-4.1-mini`, `openai/<name>` with `api_base` for any
            OpenAI-compatible server, `anthropic/...`).
        api_base: the endpoint (None: the provider's default, or LiteLLM's `*_API_BASE` variable).
        api_key_env: the name of the environment variable holding the key (None: the provider's
            usual variable, read by LiteLLM). The key's value is read at call time and never stored,
            written or logged by p2o.
        retries: retries of a call that failed for a passing reason (429, 5xx, time-out, a dropped
            connection), with exponential backoff from `retry_seconds`.
        litellm_kwargs: passed to `litellm.completion` as is (`timeout`, `extra_headers`, `top_p`,
            ...); `num_retries` there replaces `retries`.
    """

    def __init__(
        self,
        model: str,
        *,
        temperature: float,
        max_tokens: int,
        api_base: str | None = None,
        api_key_env: str | None = None,
        retries: int = 4,
        retry_seconds: float = 2.0,
        litellm_kwargs: dict[str, Any] | None = None,
    ):
        self.model = model
        self.name = f"teacher:{model}"
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.api_base = api_base
        self.api_key_env = api_key_env
        kwargs = dict(litellm_kwargs or {})
        self.retries = int(kwargs.pop("num_retries", retries))
        self.retry_seconds = retry_seconds
        self.litellm_kwargs = kwargs
        quiet_litellm()

    def _api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        import os

        value = os.environ.get(self.api_key_env)
        if not value:
            raise ReflectionError(
                f"reflection {self.name!r}: reflection_api_key_env names {self.api_key_env}, which is not set "
                "in the environment (p2o reads keys only from the environment and never writes them anywhere)"
            )
        return value

    def check_environment(self) -> None:
        """Refuse before the phase starts when the provider's API key is not in the environment."""
        if self.api_key_env:
            self._api_key()
            return
        import litellm

        try:
            env = litellm.validate_environment(model=self.model, api_base=self.api_base)
        except Exception:  # an unknown provider: let the first call tell
            return
        missing = [k for k in env.get("missing_keys", []) if k.endswith("API_KEY")]
        if not env.get("keys_in_environment", True) and missing:
            raise ReflectionError(
                f"reflection {self.name!r} needs {' or '.join(missing)} in the environment "
                "(or set reflection_api_key_env to the variable that holds the key; p2o reads keys only "
                "from the environment and never writes them anywhere)"
            )

    def _where(self) -> str:
        return f" at {self.api_base}" if self.api_base else ""

    def key_variable(self) -> str:
        """The environment variable the key comes from: `api_key_env`, or the provider's usual one."""
        if self.api_key_env:
            return self.api_key_env
        try:
            import litellm

            provider = litellm.get_llm_provider(self.model)[1]
        except Exception:
            provider = self.model.split("/", 1)[0]
        return {"together_ai": "TOGETHERAI_API_KEY", "gemini": "GEMINI_API_KEY"}.get(
            provider, f"{provider.upper()}_API_KEY"
        )

    def _key_hint(self) -> str:
        var = self.key_variable()
        if self.api_key_env:
            return f"check the key in {var} (reflection_api_key_env)"
        return f"check the key in {var} (LiteLLM's variable for this provider), or name another in reflection_api_key_env"

    def __call__(self, prompt: str, max_tokens: int | None = None) -> ReflectionReply:
        import litellm

        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens if max_tokens is None else max_tokens,
            "caching": False,
            "num_retries": 0,  # p2o retries itself, with backoff, and tells passing from lasting errors
            **self.litellm_kwargs,
        }
        if self.api_base:
            kwargs["api_base"] = self.api_base
        key = self._api_key()
        if key is not None:
            kwargs["api_key"] = key
        transient = (
            litellm.RateLimitError,
            litellm.InternalServerError,
            litellm.ServiceUnavailableError,
            litellm.Timeout,
            litellm.APIConnectionError,
        )
        for attempt in range(self.retries + 1):
            try:
                resp = litellm.completion(**kwargs)
                break
            except (litellm.AuthenticationError, litellm.PermissionDeniedError) as e:
                raise ReflectionError(
                    f"reflection model {self.model!r}{self._where()} refused the key: {_short(e)}; {self._key_hint()}"
                ) from e
            except (litellm.NotFoundError, litellm.BadRequestError) as e:
                raise ReflectionError(
                    f"reflection model {self.model!r}{self._where()} cannot be used: {_short(e)}. Check the "
                    "model name and provider prefix (teacher:<provider>/<model>) and reflection_api_base"
                ) from e
            except transient as e:
                if attempt < self.retries:
                    import time

                    time.sleep(min(60.0, self.retry_seconds * 2**attempt))
                    continue
                if _connection_refused(e):
                    raise ReflectionError(
                        f"reflection model {self.model!r}: the endpoint{self._where()} is unreachable after "
                        f"{self.retries + 1} tries: {_short(e)}. Check reflection_api_base and the network"
                    ) from e
                raise TransientReflectionError(
                    f"reflection model {self.model!r} failed {self.retries + 1} times: {_short(e)}"
                ) from e
            except litellm.APIError as e:
                if getattr(e, "status_code", 500) in (401, 403):
                    raise ReflectionError(
                        f"reflection model {self.model!r}{self._where()} refused the key: {_short(e)}; {self._key_hint()}"
                    ) from e
                raise TransientReflectionError(f"reflection model {self.model!r}: {_short(e)}") from e
        choice = resp.choices[0]
        usage = getattr(resp, "usage", None)
        try:
            cost: float | None = float(litellm.completion_cost(completion_response=resp))
        except Exception:  # no price known for this model (a self-hosted endpoint)
            cost = None
        return ReflectionReply(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            cost_usd=cost,
        )

    def preflight(self) -> None:
        self.check_environment()
        try:
            self(PREFLIGHT_PROMPT, max_tokens=16)
        except TransientReflectionError as e:
            raise ReflectionError(f"{e} (in the check before training)") from e


def _connection_refused(e: BaseException) -> bool:
    """No connection could be made (LiteLLM reports it as an APIConnectionError or, through the
    openai client, as an InternalServerError 'Connection error.'): a time-out is not one."""
    import litellm

    if isinstance(e, litellm.Timeout):
        return False
    seen: BaseException | None = e
    for _ in range(8):
        if seen is None:
            break
        name = type(seen).__name__
        if isinstance(seen, ConnectionError) or name in ("ConnectError", "APIConnectionError"):
            return True
        if "Connection error" in str(seen) or "Connection refused" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _short(e: Exception, n: int = 300) -> str:
    """An exception as `Type: message`, first line only and clipped: LiteLLM messages can be long."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:n]}"


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

    def preflight(self) -> None:
        self.client.complete_text(PREFLIGHT_PROMPT, temperature=0.0, max_tokens=4)

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
    chat_template_kwargs: dict[str, Any] | None = None,
    server: str = "transformers",
    api_base: str | None = None,
    api_key_env: str | None = None,
    retries: int = 4,
    retry_seconds: float = 2.0,
    litellm_kwargs: dict[str, Any] | None = None,
) -> Reflector:
    """Build the reflector named by `config.reflection` (`reflector_from_config` reads the config).

    `policy` (a `PolicyServer`/`RemotePolicy`) is needed for `self`. `initial` serves `initial_model`
    (a checkpoint folder or a hub id) on `server`: 'transformers' (a `transformers serve` p2o
    launches, CPU), 'vllm' (a `vllm serve` p2o launches) or the http(s) URL of a server already
    serving it. `chat_template_kwargs` go with every request to a policy (`self`, `initial`), so a
    Qwen3 with `enable_thinking: false` reflects without thinking, as it trains.
    """
    template_kwargs = dict(chat_template_kwargs or {})
    if spec.startswith("teacher:"):
        teacher = LiteLLMReflector(
            spec[len("teacher:") :],
            temperature=temperature,
            max_tokens=max_tokens,
            api_base=api_base,
            api_key_env=api_key_env,
            retries=retries,
            retry_seconds=retry_seconds,
            litellm_kwargs=litellm_kwargs,
        )
        teacher.check_environment()
        return teacher
    if spec == "self":
        if policy is None:
            raise ReflectionError("reflection 'self' needs the live policy server")
        return PolicyReflector(
            policy.client(chat_template_kwargs=template_kwargs),
            name="self",
            temperature=temperature,
            max_tokens=max_tokens,
        )
    if spec == "initial":
        if initial_model is None or log_dir is None:
            raise ReflectionError(
                "reflection 'initial' needs the initial checkpoint (initial_model) and a log directory"
            )
        from p2o.policy import RemotePolicy

        if server.startswith(("http://", "https://")):
            remote = RemotePolicy(server, str(initial_model))
            remote.check_alive()
            return PolicyReflector(
                remote.client(chat_template_kwargs=template_kwargs),
                name="initial",
                temperature=temperature,
                max_tokens=max_tokens,
            )
        launched = PolicyServer(
            initial_model,
            log_dir=log_dir,
            backend="vllm" if server == "vllm" else "transformers",
            timeout=server_timeout,
            log_name="initial_policy_server.log",
            chat_template_kwargs=template_kwargs,
        ).start()
        return PolicyReflector(
            launched.client(),
            name="initial",
            temperature=temperature,
            max_tokens=max_tokens,
            server=launched,
        )
    factory = reflector_factory(spec)
    if factory is not None:
        return as_reflector(factory(seed=seed, temperature=temperature, max_tokens=max_tokens), spec)
    registered = ", ".join(list_reflectors()) or "none"
    raise ReflectionError(
        f"unknown reflection model {spec!r}: use teacher:<litellm model>, self, initial, or a registered "
        f"one (registered: {registered}; p2o.plugins.register_reflector adds one)"
    )


def reflector_from_config(
    config: Any,
    *,
    policy: Any = None,
    initial_model: str | Path | None = None,
    log_dir: str | Path | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> Reflector:
    """`make_reflector` with every reflection setting of a `P2OConfig`."""
    return make_reflector(
        config.reflection,
        temperature=config.reflection_temperature,
        max_tokens=config.reflection_max_tokens,
        policy=policy,
        initial_model=initial_model,
        log_dir=log_dir,
        server_timeout=config.policy_server_timeout,
        seed=config.seed,
        chat_template_kwargs=chat_template_kwargs,
        server=reflection_server(config),
        api_base=getattr(config, "reflection_api_base", None),
        api_key_env=getattr(config, "reflection_api_key_env", None),
        retries=getattr(config, "reflection_retries", 4),
        retry_seconds=getattr(config, "reflection_retry_seconds", 2.0),
        litellm_kwargs=getattr(config, "reflection_litellm_kwargs", None),
    )


def reflection_server(config: Any) -> str:
    """Where `initial` is served: the configured URL or backend; 'auto' = vllm with `use_vllm`."""
    server = getattr(config, "reflection_server", "auto") or "auto"
    if server == "auto":
        return "vllm" if getattr(config, "use_vllm", False) else "transformers"
    return server
