"""The one client of an OpenAI-compatible policy server: a `dspy.LM` (LiteLLM), never cached.

`PolicyClient.lm` is a `dspy.LM` pointed at the server (`openai/<served name>`, `api_base` = the
server's `/v1`, `engine="litellm"` so that `n` stays one request, `cache=False`): DSPy programs
run through it, and `chat()` sends plain chat completions through it too. Retries on 429 / 5xx /
connection errors with backoff and the request timeout are DSPy's and LiteLLM's; p2o adds only what
they lack:

- the sampling switch of `transformers serve` (it samples only when the request carries a
  `generation_config` with `do_sample`) and the task's `chat_template_kwargs`, sent with every call;
- errors of two kinds, because a GEPA phase treats them differently. `PolicyServerError` — the
  server cannot be reached, died, or timed out: systemic; the message names the URL and, for a
  server p2o launched, its log file and the log's last lines. `PolicyRequestError` — the server
  answered this one request with an error (a prompt too long for the model, say): the caller scores
  that sample 0 and says why, as GEPA's adapters do;
- token and request counts (`usage`) across threads.

Weights change under the same model name between phases (DSPy's cache key ignores `api_base`), so
nothing here caches a response: every call is an HTTP request.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2o.tasks.base import Messages

# dspy 3.4 deprecates OpenAI-style message lists passed to an LM directly; `chat()` sends exactly
# such a list (the rendered x̃), and DSPy's own adapters still do the same.
warnings.filterwarnings(
    "ignore", message="Passing OpenAI-style message dictionaries", category=DeprecationWarning
)


class PolicyServerError(RuntimeError):
    """The policy server is unreachable, did not come up, or died. Names the URL and the log."""


class CheckpointError(PolicyServerError):
    """The checkpoint to serve does not exist (no such folder, not in the Hugging Face cache): a
    configuration error that no retry fixes."""


class PolicyRequestError(RuntimeError):
    """The server rejected one request (HTTP error status); the server itself is up."""


def log_tail(path: str | Path | None, lines: int = 25) -> str:
    """The last `lines` lines of a log file, indented, for error messages ('' when there is none)."""
    if path is None:
        return ""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    tail = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in tail)


@dataclass
class Completion:
    """One generated answer. `text` is the assistant content (what verifiers read); `reasoning` is
    the thinking a server split off (Qwen3's `<think>` block), if any."""

    text: str
    finish_reason: str | None = None
    reasoning: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass
class Usage:
    """Thread-safe counters of a client's requests and tokens."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, c: Completion | None, seconds: float) -> None:
        with self._lock:
            self.requests += 1
            self.seconds += seconds
            if c is None:
                self.errors += 1
            else:
                self.prompt_tokens += c.prompt_tokens
                self.completion_tokens += c.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "errors": self.errors,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "request_seconds": round(self.seconds, 3),
            }


_calls = threading.local()


class _TruncationFilter:
    """Drops dspy's "LM response was truncated" warning during policy calls: a GEPA rollout or a
    benchmark answer cut at `max_tokens` is expected and counted (`Completion.truncated`), and
    hundreds of them a phase would bury the progress bar. Other LMs keep the warning."""

    def filter(self, record: Any) -> bool:
        return not (getattr(_calls, "active", False) and "truncated" in record.getMessage())


def _install_filter() -> None:
    import logging

    logger = logging.getLogger("dspy.clients.lm")
    if not any(isinstance(f, _TruncationFilter) for f in logger.filters):
        logger.addFilter(_TruncationFilter())


class _policy_call:
    def __enter__(self) -> None:
        _calls.active = True

    def __exit__(self, *exc: object) -> None:
        _calls.active = False


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _unreachable_error(exc: BaseException) -> bool:
    """Whether a failed call never got an HTTP answer (connection refused or reset, timeout)."""
    import httpx
    import openai
    from dspy.utils.exceptions import LMTimeoutError, LMTransportError

    kinds = (openai.APIConnectionError, httpx.TransportError, LMTransportError, LMTimeoutError, TimeoutError)
    return any(isinstance(e, kinds) for e in _chain(exc))


def _status(exc: BaseException) -> int | None:
    for e in _chain(exc):
        for attr in ("status_code", "status"):
            value = getattr(e, attr, None)
            if isinstance(value, int) and value >= 400:
                return value
    return None


class _CallRecord:
    """Collects the LM history entries of one DSPy call: DSPy appends each entry to the history of
    every module in `caller_modules`, and `dspy.context` keeps that list per thread."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []

    def completion(self) -> Completion:
        """The call's completion as the server sent it (the last LM call of the module), with the
        tokens of all its LM calls."""
        if not self.history:
            return Completion(text="")
        prompt_tokens = completion_tokens = 0
        for entry in self.history:
            usage = entry.get("usage") or {}
            prompt_tokens += int(usage.get("prompt_tokens") or 0)
            completion_tokens += int(usage.get("completion_tokens") or 0)
        choices = getattr(self.history[-1].get("response"), "choices", None) or [None]
        message = getattr(choices[0], "message", None)
        return Completion(
            text=getattr(message, "content", None) or "",
            finish_reason=getattr(choices[0], "finish_reason", None),
            reasoning=getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )


class PolicyClient:
    """Chat completions from one model on one server, through one `dspy.LM`.

    `base_url` is the OpenAI-style root ending in `/v1`; `model` the served model name (for a server
    p2o launches with `transformers serve`: the checkpoint directory). `backend` only changes how
    sampling is requested: `transformers serve` samples only when the checkpoint's generation config
    says `do_sample`, so for temperature > 0 the client sends `generation_config` with
    `do_sample: true`; vLLM and other servers get the plain OpenAI fields. `retries`: attempts after
    the first on 429, 5xx, connection errors and timeouts (DSPy's backoff); `timeout`: seconds per
    request.

    `lm` is the `dspy.LM` itself; `lm_for(temperature, max_tokens)` a copy carrying those sampling
    settings and the server-specific fields, for `dspy.context(lm=...)`; `predict(...)` runs a DSPy
    predictor through it. `diagnose` (set by `PolicyServer`) returns a sentence about the server
    process — "exited with code 1; log: ..." — added to connection errors.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        backend: str = "openai",
        timeout: float = 600.0,
        retries: int = 2,
        chat_template_kwargs: dict[str, Any] | None = None,
        api_key: str | None = None,
        diagnose: Callable[[], str] | None = None,
    ):
        import dspy

        _install_filter()
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.backend = backend
        self.retries = retries
        self.timeout = timeout
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.diagnose = diagnose
        self.usage = Usage()
        # engine="litellm": one request per call even with n > 1 (dspy's native engine sends n);
        # cache=False: weights change under the same name, and DSPy's cache key ignores api_base.
        self.lm = dspy.LM(
            f"openai/{model}",
            api_base=self.base_url,
            api_key=api_key or "p2o",
            engine="litellm",
            cache=False,
            num_retries=retries,
            timeout=timeout,
        )
        self._copies: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.lm.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sampling(self, temperature: float, max_tokens: int, **extra: Any) -> dict[str, Any]:
        """The keyword arguments of one call: sampling settings plus the server-specific fields."""
        body: dict[str, Any] = {}
        if self.chat_template_kwargs:
            body["chat_template_kwargs"] = dict(self.chat_template_kwargs)
        if self.backend == "transformers" and temperature > 0:
            # Fields left out are filled from the checkpoint's own generation config (eos, top_k, ...).
            body["generation_config"] = json.dumps({"do_sample": True, "temperature": float(temperature)})
        kwargs: dict[str, Any] = {"temperature": float(temperature), "max_tokens": int(max_tokens)}
        if body:
            kwargs["extra_body"] = body
        kwargs.update({k: v for k, v in extra.items() if v is not None})
        return kwargs

    def lm_for(self, temperature: float, max_tokens: int, **extra: Any) -> Any:
        """A copy of `lm` whose calls use these sampling settings (and this client's server fields)."""
        kwargs = self.sampling(temperature, max_tokens, **extra)
        key = json.dumps(kwargs, sort_keys=True, default=str)
        with self._lock:
            lm = self._copies.get(key)
            if lm is None:
                lm = self._copies[key] = self.lm.copy(**kwargs)
        return lm

    def error(self, exc: BaseException) -> Exception:
        """`exc` from a call as p2o's error: server down or request rejected (others as they are)."""
        from dspy.utils.exceptions import LMError

        if isinstance(exc, PolicyServerError | PolicyRequestError):
            return exc
        if _unreachable_error(exc):
            msg = f"policy server at {self.base_url} is unreachable ({type(exc).__name__}: {str(exc)[:300]})"
            if self.diagnose is not None:
                msg += "; " + self.diagnose()
            return PolicyServerError(msg)
        if isinstance(exc, LMError) or _status(exc) is not None:
            status = _status(exc)
            what = f"answered HTTP {status}" if status else "rejected the request"
            return PolicyRequestError(
                f"{self.base_url}/chat/completions {what} for model {self.model!r}: {str(exc)[:500]}"
            )
        return exc if isinstance(exc, Exception) else RuntimeError(str(exc))

    def chat(
        self,
        messages: Messages,
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
        **extra: Any,
    ) -> Completion:
        """One completion. Raises `PolicyServerError` (unreachable) or `PolicyRequestError` (rejected)."""
        kwargs = self.sampling(temperature, max_tokens, **extra)
        start = time.perf_counter()
        try:
            with _policy_call():
                response = self.lm.forward(messages=messages, **kwargs)
            choice = response.choices[0]
            message = choice.message
            usage = getattr(response, "usage", None)
            c = Completion(
                text=getattr(message, "content", None) or "",
                finish_reason=getattr(choice, "finish_reason", None),
                reasoning=getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None),
                prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            )
        except Exception as e:
            self.usage.add(None, time.perf_counter() - start)
            raise self.error(e) from e
        self.usage.add(c, time.perf_counter() - start)
        return c

    def predict(self, predictor: Any, inputs: dict[str, Any], **kwargs: Any) -> Any:
        """`call` with the same arguments, returning only the `dspy.Prediction`."""
        return self.call(predictor, inputs, **kwargs)[0]

    def call(
        self,
        predictor: Any,
        inputs: dict[str, Any],
        *,
        adapter: Any,
        temperature: float = 0.0,
        max_tokens: int = 512,
        **extra: Any,
    ) -> tuple[Any, Completion]:
        """Run a DSPy predictor (or module) on `inputs` through `adapter` and this server: a DSPy call
        (history, callbacks and usage tracking work as in any DSPy program). Returns the
        `dspy.Prediction` and what the server said about the call: the `Completion` (raw text, finish
        reason, token counts) read from the LM history entry DSPy recorded for it. With DSPy's history
        off (`disable_history`), only the text is known. Raises as `chat` does."""
        import dspy

        lm = self.lm_for(temperature, max_tokens, **extra)
        record = _CallRecord()
        callers = [*(dspy.settings.caller_modules or []), record]
        start = time.perf_counter()
        try:
            with dspy.context(lm=lm, adapter=adapter, caller_modules=callers), _policy_call():
                prediction = predictor(**inputs)
        except Exception as e:
            self.usage.add(None, time.perf_counter() - start)
            raise self.error(e) from e
        c = record.completion()
        self.usage.add(c, time.perf_counter() - start)
        return prediction, c

    def complete_text(self, prompt: str, *, temperature: float, max_tokens: int) -> Completion:
        """A single user message → completion (how `self` / `initial` reflection calls the policy)."""
        return self.chat(
            [{"role": "user", "content": prompt}], temperature=temperature, max_tokens=max_tokens
        )
