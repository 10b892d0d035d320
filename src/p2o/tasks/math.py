"""The built-in `math` task: the paper's boxed-answer prompt and a math-verify verifier.

`MathVerifier` reads the last `\\boxed{...}` (or `\\fbox{...}`) of a completion and decides
equivalence with the reference using math-verify. It is safe to call from many threads at once
and bounds its time per call, because math-verify itself is neither: its timeouts use
`signal.alarm`, which works only in the main thread, and a sympy computation in C cannot be
interrupted by a signal at all. So the expensive part runs in a small pool of worker *processes*
shared by every verifier of this process:

- each worker is a fresh interpreter (`python -c`, not a fork of a possibly multithreaded parent)
  that runs math-verify in its own main thread, under its own interval timer (a soft deadline,
  sub-second resolution, covering the whole comparison) and with capped memory;
- the calling thread waits for the reply at most `timeout_s` (the hard deadline); a worker that
  overruns it is killed and replaced on demand, so one pathological answer costs one worker
  start-up (about a second), never a stuck thread;
- the pool starts lazily on first use, grows to `max_workers`, is shut down at exit, and a forked
  child (a data-loader worker, say) starts its own instead of touching its parent's;
- a request still running after half a second is *slow* (ordinary answers take milliseconds): each
  slow one lets the pool start one extra worker (up to `max(4, 2 × max_workers)` extra), so answers
  that run into the timeout never hold ordinary ones back by more than about a second and a
  worker start-up; extra workers stop once the slow requests end.

Verdicts are remembered per (answer, reference), timeouts included, so a pathological answer
that GRPO repeats across a group, or that comes back in later steps, costs its timeout once;
threads asking the same question at the same time wait for one worker's answer. A timeout is
remembered only when the worker really computed (not when a starved machine gave it no CPU).

Cheap checks run in the calling thread first and never reach a worker: answers nested too deeply
or too long are scored 0 at once, and answers equal to the reference after a light normalisation
score 1 at once. Every outcome is a `Verdict` with a sentence a reflection model can act on; one
sample never raises.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from p2o.tasks.base import Messages, Task, Verdict
from p2o.tasks.registry import register_task, register_verifier

logger = logging.getLogger(__name__)

# The instruction of the paper's math runs (DeepScaleR / DeepMath preprocessing in the authors'
# release, scripts/data_process/deepscaler.py, template "baseline_boxed").
MATH_PROMPT = "Let's think step by step and output the final answer within \\boxed{}."

# Where the math task reads its data when no dataset is given: the paper's training set.
MATH_DATASET_DEFAULTS: dict[str, Any] = {
    "source": "agentica-org/DeepScaleR-Preview-Dataset",
    "problem_field": "problem",
    "answer_field": "answer",
}

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_ANSWER_CHARS = 1000
DEFAULT_MAX_NESTING = 32
DEFAULT_CACHE_SIZE = 4096

# A worker gets this long to import math-verify and say it is ready (slow on a loaded machine).
_STARTUP_TIMEOUT_S = 60.0
# The worker stops itself at this fraction of the caller's deadline, so the common slow case
# (interruptible sympy work) ends with a reply and a live worker instead of a kill and a restart.
_SOFT_DEADLINE_FRACTION = 0.85
# Address-space cap of a worker: a sympy bomb fails with MemoryError instead of eating the host.
_WORKER_MEMORY_LIMIT_BYTES = 4 << 30
# Without a box (require_boxed=False) math-verify looks for an answer in this much of the end.
_UNBOXED_TAIL_CHARS = 2000
# A request running this long is slow (ordinary answers take milliseconds): its worker stops
# counting against the pool's size, so the answers queued behind it get a worker of their own.
_SLOW_REQUEST_S = 0.5
# A timed-out request is remembered only if its worker used at least this share of the deadline
# in CPU time: one starved by a loaded machine may have been an ordinary answer.
_MIN_CPU_SHARE_TO_REMEMBER = 0.25


def math_messages(problem: str, system: str | None = None) -> Messages:
    """The original prompt x of a math problem, as in the paper's data preprocessing.

    The user message is the instruction, a newline, then `Question: ` and the problem — the
    `baseline_boxed` template of the authors' release. `system`, when given, comes first as a
    system message.
    """
    messages: Messages = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": f"{MATH_PROMPT}\nQuestion: {problem}"})
    return messages


# ---------------------------------------------------------------- reading the final answer

# One pass over a completion visits only backslash commands and braces: a box opener (the
# command and its brace), any other command, an escaped character (`\{`, `\\`), a brace.
_BOX_TOKENS = re.compile(r"\\(?:boxed|fbox)\s*\{|\\[A-Za-z]+|\\.|[{}]", re.DOTALL)
_BRACKETS = re.compile(r"[{}()\[\]]")
_OPENERS = frozenset("{([")


def last_boxed(text: str) -> str | None:
    """The content of the last complete `\\boxed{...}` / `\\fbox{...}` in `text`, or None.

    "Last" is the box opened last among those whose braces close, so `\\boxed{1} ... \\boxed{2}`
    gives `2`, and an unclosed trailing `\\boxed{2` falls back to `1`. Escaped braces (`\\{`,
    `\\}`) are content, not grouping. Iterative and linear in the length of `text`.
    """
    stack: list[int] = []  # per open brace: where a box's content starts, or -1 for plain braces
    best_start = best_end = -1
    for m in _BOX_TOKENS.finditer(text):
        token = m.group()
        if token == "{":
            stack.append(-1)
        elif token == "}":
            if stack:
                start = stack.pop()
                if start > best_start:
                    best_start, best_end = start, m.start()
        elif len(token) > 2 and token[-1] == "{":  # a box opener
            stack.append(m.end())
    if best_start < 0:
        return None
    return text[best_start:best_end]


def bracket_depth(text: str) -> int:
    """The deepest nesting of `{`, `(`, `[` (closers of any kind pop one level). Linear."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(text):
        if m.group() in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
        elif depth:
            depth -= 1
    return deepest


_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _strip_math_delimiters(text: str) -> str:
    text = text.strip()
    for left, right in _MATH_DELIMITERS:
        if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
            return text[len(left) : len(text) - len(right)].strip()
    return text


def reference_answer(reference: str) -> str:
    """The answer a reference states: its last box when it has one, else the text without `$`s."""
    boxed = last_boxed(reference) if "\\" in reference else None
    return _strip_math_delimiters(boxed if boxed is not None else reference)


# Typography that never changes a value: spacing commands, \left/\right, display sizes.
_TYPOGRAPHY = re.compile(r"\\[,;:! ]|\\(?:left|right|displaystyle)(?![A-Za-z])")
_SPACES_NEAR_SYMBOLS = re.compile(r" ?([^A-Za-z0-9 ]) ?")


def normalize_answer(answer: str) -> str:
    """A light, value-preserving normal form used only to short-circuit identical answers.

    Spaces are dropped only next to symbols, so `\\pi r` and `\\pir` stay different.
    """
    s = _strip_math_delimiters(answer)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _TYPOGRAPHY.sub("", s)
    s = " ".join(s.split())
    s = _SPACES_NEAR_SYMBOLS.sub(r"\1", s)
    return s.rstrip(".").strip()


# ---------------------------------------------------------------- the verifier


@register_verifier("math")
class MathVerifier:
    """`(completion, reference) -> Verdict` for math answers, by math-verify, from any thread.

    Options:
        timeout_s: the most one call spends checking an answer (the worker is killed past it).
            Waiting for a free worker when more threads call than there are workers, and the
            first call's worker start-up (about a second), come on top.
        require_boxed: when True (the paper's reward) a completion without a `\\boxed{}` answer
            scores 0; when False, math-verify looks for an answer in the last
            2000 characters instead.
        include_gold_in_feedback: state the reference answer in the feedback of wrong answers.
        max_workers: worker processes of the pool this process shares (it grows to the largest
            value any verifier asks for); default min(4, CPUs). While requests are slow, up to
            max(4, 2 × max_workers) extra workers run, one per slow request.
        max_answer_chars / max_nesting: answers longer, or with brackets nested deeper, are
            scored 0 without being parsed.
        cache_size: verdicts of distinct (answer, reference) pairs remembered, timeouts included;
            0 disables (and then every call, even a repeated one, reaches a worker).
    """

    def __init__(
        self,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        require_boxed: bool = True,
        include_gold_in_feedback: bool = True,
        max_workers: int | None = None,
        max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
        max_nesting: int = DEFAULT_MAX_NESTING,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"math verifier: timeout_s must be > 0 seconds, got {timeout_s!r}")
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"math verifier: max_workers must be >= 1, got {max_workers!r}")
        if max_answer_chars < 1 or max_nesting < 1 or cache_size < 0:
            raise ValueError(
                "math verifier: max_answer_chars and max_nesting must be >= 1 and cache_size >= 0, got "
                f"{max_answer_chars!r}, {max_nesting!r}, {cache_size!r}"
            )
        self.timeout_s = float(timeout_s)
        self.require_boxed = require_boxed
        self.include_gold_in_feedback = include_gold_in_feedback
        self.max_workers = max_workers or default_max_workers()
        self.max_answer_chars = max_answer_chars
        self.max_nesting = max_nesting
        self.cache_size = cache_size
        # The worker's soft deadline as a fraction of timeout_s; tests raise it above 1 to force
        # the parent's hard deadline (kill and replace) to act first.
        self._soft_fraction = _SOFT_DEADLINE_FRACTION
        # (kind, answer, reference) -> the worker's reply; guarded by _cache_lock, like _pending.
        self._cache: OrderedDict[tuple[str, str, str], tuple] = OrderedDict()
        self._pending: dict[tuple[str, str, str], _Pending] = {}
        self._cache_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"MathVerifier(timeout_s={self.timeout_s}, require_boxed={self.require_boxed}, "
            f"include_gold_in_feedback={self.include_gold_in_feedback}, max_workers={self.max_workers})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        state["_pending"] = {}
        del state["_cache_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache_lock = threading.Lock()

    def warmup(self) -> None:
        """Start this verifier's worker processes now, so no call pays for their start-up."""
        _shared_pool(self.max_workers).prestart(self.max_workers)

    def __call__(self, completion: str, reference: str) -> Verdict:
        try:
            return self._judge(completion, reference)
        except Exception as e:  # the last line of "never raise for one sample"
            logger.exception("math verifier failed on one sample")
            return Verdict(0.0, f"The verifier failed on this sample ({type(e).__name__}: {e}).")

    # -------------------------------------------------------------- one sample

    def _gold(self, gold: str) -> str:
        return f" The correct answer is {gold}." if self.include_gold_in_feedback else ""

    def _judge(self, completion: str, reference: str) -> Verdict:
        completion = (
            completion if isinstance(completion, str) else ("" if completion is None else str(completion))
        )
        gold = reference_answer(reference if isinstance(reference, str) else str(reference))
        if not gold:
            return Verdict(0.0, "The reference answer is empty, so there is nothing to check against.")
        problem = self._check_size(gold)
        if problem:
            return Verdict(0.0, f"The reference answer could not be checked: {problem}.")

        answer = last_boxed(completion) if "\\" in completion else None
        if answer is None:
            if self.require_boxed:
                hint = self._gold(gold) or " The final answer must be written as \\boxed{...}."
                return Verdict(0.0, "No \\boxed{} answer was found." + hint)
            return self._judge_unboxed(completion[-_UNBOXED_TAIL_CHARS:], gold)

        answer = _strip_math_delimiters(answer)
        if not answer:
            return Verdict(0.0, "Your \\boxed{} answer is empty." + self._gold(gold), extracted="")
        problem = self._check_size(answer)
        if problem:
            extracted = answer if len(answer) <= self.max_answer_chars else None
            return Verdict(
                0.0,
                f"Your final answer was not checked: {problem}; it is scored as incorrect."
                + self._gold(gold),
                extracted=extracted,
            )
        if normalize_answer(answer) == normalize_answer(gold):
            return Verdict(1.0, f"Your final answer {answer} is correct.", extracted=answer)

        reply = self._verify(("compare", answer, gold))
        if reply[0] != "ok":
            return self._failure_verdict(reply, answer, gold)
        return self._answer_verdict(bool(reply[1]), bool(reply[2]), answer, gold)

    def _judge_unboxed(self, tail: str, gold: str) -> Verdict:
        problem = self._check_size(tail, limit=_UNBOXED_TAIL_CHARS)
        if problem:
            return Verdict(
                0.0, f"Your answer was not checked: {problem}; it is scored as incorrect." + self._gold(gold)
            )
        reply = self._verify(("extract", tail, gold))
        if reply[0] != "ok":
            return self._failure_verdict(reply, None, gold)
        _, equal, parsed, extracted = reply
        if not extracted:
            return Verdict(0.0, "No final answer was found." + self._gold(gold))
        return self._answer_verdict(bool(equal), bool(parsed), extracted, gold)

    def _check_size(self, text: str, limit: int | None = None) -> str | None:
        depth = bracket_depth(text)
        if depth > self.max_nesting:
            return f"its brackets are nested {depth} levels deep (limit {self.max_nesting})"
        limit = limit or self.max_answer_chars
        if len(text) > limit:
            return f"it is {len(text)} characters long (limit {limit})"
        return None

    def _answer_verdict(self, equal: bool, parsed: bool, answer: str, gold: str) -> Verdict:
        if equal:
            return Verdict(1.0, f"Your final answer {answer} is correct.", extracted=answer)
        if not parsed:
            return Verdict(
                0.0,
                f"Your final answer {answer} is incorrect: it could not be read as a mathematical "
                "expression." + self._gold(gold),
                extracted=answer,
            )
        return Verdict(0.0, f"Your final answer {answer} is incorrect." + self._gold(gold), extracted=answer)

    def _failure_verdict(self, reply: tuple, answer: str | None, gold: str) -> Verdict:
        what = f"your final answer {answer}" if answer is not None else "your answer"
        if reply[0] == "timeout":
            text = f"Checking {what} timed out after {self.timeout_s:g} s, so it is scored as incorrect."
        else:
            text = f"The verifier failed while checking {what} ({reply[1]}), so it is scored as incorrect."
        return Verdict(0.0, text[0].upper() + text[1:] + self._gold(gold), extracted=answer)

    def _ask_worker(self, request: tuple) -> tuple:
        soft_s = self.timeout_s * self._soft_fraction
        return _shared_pool(self.max_workers).run((*request, soft_s, self.timeout_s), self.timeout_s)

    def _verify(self, request: tuple[str, str, str]) -> tuple:
        """The worker's reply to `request`, from the cache when this question was asked before; a
        question being answered for another thread right now is waited for, not asked again."""
        if not self.cache_size:
            return self._ask_worker(request)
        with self._cache_lock:
            reply = self._cache.get(request)
            if reply is not None:
                self._cache.move_to_end(request)
                return reply
            pending = self._pending.get(request)
            leader = pending is None
            if leader:
                pending = self._pending[request] = _Pending()
        if not leader:
            pending.done.wait()
            return pending.reply
        reply = ("failed", "the verifier stopped before the worker replied")
        try:
            reply = self._ask_worker(request)
        finally:
            with self._cache_lock:
                if _worth_remembering(reply, self.timeout_s * self._soft_fraction):
                    self._cache[request] = reply
                    if len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
                del self._pending[request]
            pending.reply = reply
            pending.done.set()
        return reply


class _Pending:
    """A question one thread is asking a worker; others asking the same wait for its reply."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: tuple = ()


def _worth_remembering(reply: tuple, soft_s: float) -> bool:
    """Verdicts and math-verify's own errors always; a timeout when the worker spent a real share
    of the deadline computing, or was stuck past it (killed); never a worker that failed."""
    if reply[0] in ("ok", "error"):
        return True
    if reply[0] == "timeout":
        return len(reply) < 2 or reply[1] >= _MIN_CPU_SHARE_TO_REMEMBER * soft_s
    return False


def default_max_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


# ---------------------------------------------------------------- the worker pool (parent side)


class WorkerStartError(RuntimeError):
    """A math-verify worker process could not be started (the message says why)."""


@dataclass
class _Worker:
    proc: subprocess.Popen
    conn: Connection

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def describe_exit(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "the worker stopped answering"
        if code < 0:
            try:
                return f"the worker was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"the worker was killed by signal {-code}"
        return f"the worker exited with code {code}"


_WORKER_BOOT = "import sys; from p2o.tasks.math import _worker_main; _worker_main(int(sys.argv[1]))"


def _launch_worker() -> _Worker:
    parent_sock, child_sock = socket.socketpair()
    env = dict(os.environ)
    # The worker imports p2o from wherever this process did, installed or not.
    src_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT, str(child_sock.fileno())],
            pass_fds=(child_sock.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=env,
            # Its own session: a Ctrl-C in the terminal goes to the caller, which then shuts the
            # pool down; the workers never print KeyboardInterrupt tracebacks.
            start_new_session=True,
        )
    except OSError as e:
        parent_sock.close()
        raise WorkerStartError(f"cannot start a math-verify worker with {sys.executable!r}: {e}") from e
    finally:
        child_sock.close()
    return _Worker(proc, Connection(parent_sock.detach()))


def _await_ready(worker: _Worker) -> None:
    try:
        if worker.conn.poll(_STARTUP_TIMEOUT_S):
            message = worker.conn.recv()
            if message[0] == "ready":
                return
            reason = f"it reported {message!r}"
        else:
            reason = f"it was not ready after {_STARTUP_TIMEOUT_S:g} s"
    except (EOFError, OSError):
        worker.proc.wait(timeout=10)
        reason = f"{worker.describe_exit()} while starting (its error is on stderr)"
    worker.kill()
    raise WorkerStartError(f"math-verify worker failed to start: {reason}")


class _Ticket:
    """A caller waiting for a worker; served in arrival order."""

    __slots__ = ("worker",)

    def __init__(self) -> None:
        self.worker: _Worker | None = None


class _WorkerPool:
    """Worker processes, each used by one calling thread at a time, handed to waiting callers in
    arrival order (a caller that just finished never jumps the queue). Grown on demand to `size`,
    and past it by one worker per slow request (up to `extra_limit`), so that slow requests never
    take every worker; extra workers are started in the background and stop when the load is over.
    """

    def __init__(self, size: int) -> None:
        self.pid = os.getpid()
        self.size = size
        self.started = 0
        self.killed = 0
        self.peak = 0
        self._idle: list[_Worker] = []
        self._waiting: deque[_Ticket] = deque()
        self._count = 0  # live workers, busy or idle, plus those starting
        self._starting = 0  # of those, started in the background for waiting callers
        self._busy: dict[int, float] = {}  # id(worker) -> when its current request was sent
        self._start_failures = 0  # callers waiting for a worker give up when a start fails
        self._start_error = ""
        self._cond = threading.Condition()
        self._closed = False

    @property
    def extra_limit(self) -> int:
        return max(4, 2 * self.size)

    def _capacity(self, now: float) -> int:
        """Workers allowed now: `size`, plus one for each request that has run `_SLOW_REQUEST_S`."""
        slow = sum(1 for sent in self._busy.values() if now - sent >= _SLOW_REQUEST_S)
        return self.size + min(slow, self.extra_limit)

    def _next_slow(self, now: float) -> float | None:
        """Seconds until a busy request turns slow and so may raise the capacity (None: none will)."""
        if self._capacity(now) >= self.size + self.extra_limit:
            return None
        waits = [sent + _SLOW_REQUEST_S - now for sent in self._busy.values() if now - sent < _SLOW_REQUEST_S]
        return max(0.01, min(waits)) if waits else None

    def grow_to(self, size: int) -> None:
        with self._cond:
            if size > self.size:
                self.size = size
                self._cond.notify_all()

    def prestart(self, n: int) -> None:
        with self._cond:
            n = max(0, min(n, self.size) - self._count)
            self._count += n
            self.peak = max(self.peak, self._count)
        launched: list[_Worker] = []
        try:
            for _ in range(n):
                launched.append(_launch_worker())
        finally:
            with self._cond:
                self._count -= n - len(launched)
        error: WorkerStartError | None = None
        for worker in launched:
            try:
                _await_ready(worker)
            except WorkerStartError as e:
                self._discard(worker)
                error = error or e
                continue
            self._count_started()
            self._release(worker)
        if error is not None:
            raise error

    def run(self, request: tuple, deadline_s: float) -> tuple:
        """Send one request to a free worker; its reply (("ok", ...), ("timeout", cpu seconds),
        ("error", math-verify's exception)), ("timeout",) when killed past the deadline, or
        ("failed", why) when no worker could answer."""
        try:
            worker = self._acquire()
        except WorkerStartError as e:
            logger.warning("%s", e)
            return ("failed", str(e))
        healthy = False
        with self._cond:
            self._busy[id(worker)] = time.monotonic()
        try:
            worker.conn.send(request)
            if not worker.conn.poll(deadline_s):
                logger.info("math-verify worker %d overran %.1f s; killing it", worker.proc.pid, deadline_s)
                with self._cond:
                    self.killed += 1
                return ("timeout",)
            reply = worker.conn.recv()
            healthy = True
            return reply
        except (EOFError, OSError):
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=1)
            return ("failed", worker.describe_exit())
        finally:
            with self._cond:
                self._busy.pop(id(worker), None)
            if healthy:
                self._release(worker)
            else:
                self._discard(worker)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for worker in idle:
            worker.conn.close()  # the worker sees end-of-file and exits
        deadline = time.monotonic() + 2.0
        for worker in idle:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()

    def _acquire(self) -> _Worker:
        """A worker for this caller: an idle one when nobody waits, else the next one freed or
        started after those who came first. While callers wait and the capacity allows, workers
        are started in the background (a caller never waits on one particular start-up)."""
        with self._cond:
            if self._closed:
                raise WorkerStartError("the math-verify worker pool was shut down")
            if self._idle and not self._waiting:
                return self._idle.pop()
            ticket = _Ticket()
            self._waiting.append(ticket)
            failures = self._start_failures
            try:
                while ticket.worker is None:
                    if self._closed:
                        raise WorkerStartError("the math-verify worker pool was shut down")
                    if self._start_failures != failures:
                        raise WorkerStartError(self._start_error)
                    now = time.monotonic()
                    if self._starting < len(self._waiting) and self._count < self._capacity(now):
                        self._count += 1
                        self._starting += 1
                        self.peak = max(self.peak, self._count)
                        threading.Thread(
                            target=self._start_one, name="math-verify-start", daemon=True
                        ).start()
                        continue
                    self._cond.wait(self._next_slow(now))
                return ticket.worker
            finally:
                if ticket.worker is None:
                    self._waiting.remove(ticket)

    def _start_one(self) -> None:
        try:
            worker = _launch_worker()
            _await_ready(worker)
        except BaseException as e:
            logger.warning("%s", e)
            with self._cond:
                self._count -= 1
                self._starting -= 1
                self._start_failures += 1
                self._start_error = str(e)
                self._cond.notify_all()
            return
        with self._cond:
            self._starting -= 1
        self._count_started()
        self._release(worker)

    def _count_started(self) -> None:
        with self._cond:
            self.started += 1

    def _release(self, worker: _Worker) -> None:
        """Hand `worker` to the longest-waiting caller, or keep it idle, or stop it when it is an
        extra worker and the load that needed it is over."""
        with self._cond:
            if self._closed:
                stop = worker.kill
            elif self._waiting:
                self._waiting.popleft().worker = worker
                self._cond.notify_all()
                return
            elif self._count <= self.size + min(len(self._busy), self.extra_limit):
                # Kept while the pool is busy: a request not yet slow may turn slow any moment,
                # and a worker stopped now would have to be started again.
                self._idle.append(worker)
                return
            else:
                stop = functools.partial(self._discard, worker)
        stop()

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._cond:
            self._count -= 1
            self._cond.notify_all()


_POOL: _WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def _shared_pool(size: int) -> _WorkerPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = _WorkerPool(size)
        else:
            _POOL.grow_to(size)
        return _POOL


def worker_pool_stats() -> dict[str, int]:
    """Size and counters of this process's worker pool (zeros before first use); `peak` is the
    most workers alive at once, extra ones for slow requests included."""
    pool = _POOL
    if pool is None or pool.pid != os.getpid():
        return {"size": 0, "started": 0, "killed": 0, "peak": 0}
    return {"size": pool.size, "started": pool.started, "killed": pool.killed, "peak": pool.peak}


def shutdown_worker_pool() -> None:
    """Stop this process's math-verify workers (also done at exit); the next call starts new ones."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


def _forget_pool_after_fork() -> None:
    # In a forked child the parent's workers are not ours: close our copies of their sockets
    # (so they still see end-of-file when the parent exits) and start afresh on first use.
    global _POOL, _POOL_LOCK
    pool, _POOL = _POOL, None
    _POOL_LOCK = threading.Lock()
    if pool is not None:
        for worker in pool._idle:
            with contextlib.suppress(OSError):
                worker.conn.close()


atexit.register(shutdown_worker_pool)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


# ---------------------------------------------------------------- the worker (child side)


class _Deadline(BaseException):
    """Raised by the worker's timer; a BaseException so that no `except Exception` swallows it."""


_ARMED = False


def _on_alarm(signum: int, frame: Any) -> None:
    if _ARMED:
        raise _Deadline


def _limit_worker_resources(cpu_budget_s: float | None = None) -> None:
    import resource

    if cpu_budget_s is None:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY or soft > _WORKER_MEMORY_LIMIT_BYTES:
            limit = _WORKER_MEMORY_LIMIT_BYTES
            if hard != resource.RLIM_INFINITY:
                limit = min(limit, hard)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        return
    # A CPU-time limit a little past this request's deadline: if the parent died and can no longer
    # kill a worker stuck in C code, the kernel does (SIGXCPU). Idle workers use no CPU.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime + cpu_budget_s) + 5
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _compare(kind: str, answer: str, gold: str) -> tuple:
    from math_verify import parse, verify

    gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    if kind == "compare":
        pred = parse(f"\\boxed{{{answer}}}", parsing_timeout=None)
        extracted = answer
    else:  # "extract": math-verify finds the answer in free text
        pred = parse(answer, parsing_timeout=None)
        extracted = pred[-1] if pred and isinstance(pred[-1], str) else None
    parsed = any(not isinstance(p, str) for p in pred)
    equal = bool(pred) and bool(gold_parsed) and verify(gold_parsed, pred, timeout_seconds=None)
    if kind == "compare":
        return ("ok", equal, parsed)
    return ("ok", equal, parsed, extracted)


def _serve(request: tuple) -> tuple:
    global _ARMED
    kind, answer, gold, soft_s, hard_s = request
    cpu_start = time.process_time()
    try:
        _limit_worker_resources(cpu_budget_s=hard_s)
        _ARMED = True
        # Repeats every 50 ms until disarmed, in case some library catches the first one.
        signal.setitimer(signal.ITIMER_REAL, soft_s, 0.05)
        try:
            return _compare(kind, answer, gold)
        finally:
            _ARMED = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Deadline:
        return ("timeout", time.process_time() - cpu_start)
    except Exception as e:  # MemoryError, RecursionError, sympy's own errors
        return ("error", f"{type(e).__name__} in math-verify: {str(e)[:200]}")


def _worker_main(fd: int) -> None:
    """Entry point of a worker process: answer requests on the socket `fd` until end-of-file."""
    conn = Connection(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _on_alarm)
    _limit_worker_resources()
    # math-verify warns about every timeout and about running without its own alarm; the
    # verdict already says what happened.
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)
    _serve(("compare", "\\frac{1}{2}", "0.5", 30.0, 30.0))  # build the parsers before "ready"
    conn.send(("ready", os.getpid()))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        reply = _serve(request)
        try:
            conn.send(reply)
        except OSError:
            return


# ---------------------------------------------------------------- the task


@register_task("math")
def math_task(
    system: str | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
    **verifier_options: Any,
) -> Task:
    """The paper's math task: boxed-answer prompt, `MathVerifier`, DeepScaleR fields by default.

    `system`: an optional system message; `chat_template_kwargs`: passed to the tokenizer's
    chat template (e.g. `{"enable_thinking": False}` for Qwen3); any other keyword is a
    `MathVerifier` option (`timeout_s`, `require_boxed`, `include_gold_in_feedback`, ...).
    """
    try:
        verifier = MathVerifier(**verifier_options)
    except TypeError as e:
        raise TypeError(
            f"math task: {e}. Options: system, chat_template_kwargs, and the MathVerifier options "
            "timeout_s, require_boxed, include_gold_in_feedback, max_workers, max_answer_chars, "
            "max_nesting, cache_size"
        ) from e
    return Task(
        name="math",
        build_messages=functools.partial(math_messages, system=system),
        verifier=verifier,
        dataset=dict(MATH_DATASET_DEFAULTS),
        description="Competition math with a \\boxed{} final answer, checked by math-verify.",
        chat_template_kwargs=dict(chat_template_kwargs or {}),
    )
