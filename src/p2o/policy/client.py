"""A client of an OpenAI-compatible policy server: one chat completion per call, never cached.

Weights change under the same model name between phases, so nothing here caches a response: every
call is an HTTP request. Errors are of two kinds, because a GEPA phase treats them differently:

- `PolicyServerError` — the server cannot be reached, died, or refuses every request: systemic. The
  message names the URL and, for a server p2o launched, its log file and the log's last lines.
- `PolicyRequestError` — the server answered this one request with an error (a prompt too long for
  the model, say): the caller scores that sample 0 and says why, as GEPA's adapters do.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from p2o.tasks.base import Messages


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


class PolicyClient:
    """Chat completions from one model on one server.

    `base_url` is the OpenAI-style root ending in `/v1`; `model` the served model name (for a server
    p2o launches with `transformers serve`: the checkpoint directory). `backend` only changes how
    sampling is requested: `transformers serve` samples only when the checkpoint's generation config
    says `do_sample`, so for temperature > 0 the client sends `generation_config` with
    `do_sample: true`; vLLM and other servers get the plain OpenAI fields.

    `diagnose` (set by `PolicyServer`) returns a sentence about the server process — "exited with
    code 1; log: ..." — added to connection errors.
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
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.backend = backend
        self.retries = retries
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.diagnose = diagnose
        self.usage = Usage()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # A pooled client is thread-safe; GEPA evaluations call it from worker threads.
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0),
            headers=headers,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _body(self, messages: Messages, temperature: float, max_tokens: int, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": float(temperature),
            "max_tokens": int(max_tokens),
            "stream": False,
        }
        if self.chat_template_kwargs:
            body["chat_template_kwargs"] = self.chat_template_kwargs
        if self.backend == "transformers" and temperature > 0:
            # Fields left out are filled from the checkpoint's own generation config (eos, top_k, ...).
            body["generation_config"] = json.dumps({"do_sample": True, "temperature": float(temperature)})
        body.update({k: v for k, v in extra.items() if v is not None})
        return body

    def _unreachable(self, err: Exception) -> PolicyServerError:
        msg = f"policy server at {self.base_url} is unreachable ({type(err).__name__}: {err})"
        if self.diagnose is not None:
            msg += "; " + self.diagnose()
        return PolicyServerError(msg)

    def chat(
        self,
        messages: Messages,
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
        **extra: Any,
    ) -> Completion:
        """One completion. Raises `PolicyServerError` (unreachable) or `PolicyRequestError` (rejected)."""
        body = self._body(messages, temperature, max_tokens, **extra)
        url = f"{self.base_url}/chat/completions"
        start = time.perf_counter()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                resp = self._http.post(url, json=body)
            except (httpx.TransportError, httpx.TimeoutException) as e:
                last = e
                if attempt < self.retries:
                    time.sleep(0.5 * (attempt + 1))
                continue
            if resp.status_code in (502, 503, 504) and attempt < self.retries:
                time.sleep(0.5 * (attempt + 1))  # a restarting proxy or a busy server: worth a retry
                continue
            if resp.status_code >= 400:
                self.usage.add(None, time.perf_counter() - start)
                raise PolicyRequestError(
                    f"{url} answered HTTP {resp.status_code} for model {self.model!r}: {resp.text[:500]}"
                )
            try:
                data = resp.json()
                choice = data["choices"][0]
                message = choice.get("message") or {}
                usage = data.get("usage") or {}
                c = Completion(
                    text=message.get("content") or "",
                    finish_reason=choice.get("finish_reason"),
                    reasoning=message.get("reasoning_content") or message.get("reasoning"),
                    prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0),
                )
            except (ValueError, KeyError, IndexError, TypeError) as e:
                self.usage.add(None, time.perf_counter() - start)
                raise PolicyRequestError(f"{url} returned an unreadable response: {resp.text[:300]!r}") from e
            self.usage.add(c, time.perf_counter() - start)
            return c
        self.usage.add(None, time.perf_counter() - start)
        assert last is not None
        raise self._unreachable(last)

    def complete_text(self, prompt: str, *, temperature: float, max_tokens: int) -> Completion:
        """A single user message → completion (how `self` / `initial` reflection calls the policy)."""
        return self.chat(
            [{"role": "user", "content": prompt}], temperature=temperature, max_tokens=max_tokens
        )
