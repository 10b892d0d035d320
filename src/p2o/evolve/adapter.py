"""The GEPA adapter: a candidate template is scored by rolling out the live policy on x̃ = T(x, z).

`PolicyTemplateAdapter` implements gepa's `GEPAAdapter` protocol:

- `evaluate(batch, candidate)` runs the template program on each hard sample as a DSPy call: the
  program's predictor, with the candidate as its instruction, through `TemplateAdapter` (the one
  renderer, so the bytes sent are the trainer's x̃) to the policy client's `dspy.LM` (never cached,
  with the task's chat-template kwargs and the phase's sampling settings), `samples_per_item` times
  (default one greedy sample); each completion is scored with the task's verifier and an item's
  score is the mean over its samples. DSPy's history, callbacks and usage tracking see every call.
  Calls run concurrently (`num_threads`). One failed request scores its sample 0 with the reason; a
  server that is down raises `PolicyServerError` and stops the phase.
- `make_reflective_dataset` shows the reflection model, per sample, the full original prompt x, the
  policy's whole output, and feedback: the verifier's verdict and, unless `include_gold=False`, the
  gold answer. Outputs are cut (in the middle, the cut marked) only when the reflection prompt would
  not fit `max_input_tokens`, as the authors cut only to fit the reflection model's context.
- `propose_new_texts` renders the user's meta-prompt file, calls the reflection model, and validates
  the reply (`p2o.evolve.proposals`) before it can become a candidate. gepa catches every exception
  raised there, so a reflection model that cannot work is recorded in `fatal` (a configuration
  error at once; passing errors after `MAX_CONSECUTIVE_REFLECTION_ERRORS` in a row) and the phase's
  stop condition ends GEPA's loop on it.

A (template, sample) pair is rolled out once per phase: GEPA re-scores a parent on its minibatch every
iteration, and re-scores the seed on resume; those reuse the stored rollouts (`evaluations.jsonl`)
instead of querying the policy again. GEPA still counts them as metric calls, so the budget means
what it means in GEPA. The store lives in the phase's run directory, i.e. one checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gepa.core.adapter import EvaluationBatch

from p2o.evolve.proposals import validate_proposal
from p2o.evolve.reflection import ReflectionError, Reflector, TransientReflectionError
from p2o.policy import PolicyClient, PolicyRequestError, PolicyServerError
from p2o.policy.pool import thread_map
from p2o.tasks.base import Sample, Task
from p2o.templates.meta_prompts import MetaPrompt
from p2o.templates.programs import TemplateAdapter, TemplateProgram

# Reflection calls that fail in a row before the phase stops (a model that never answers).
MAX_CONSECUTIVE_REFLECTION_ERRORS = 3
# Characters per token when sizing a reflection prompt without the reflection model's tokenizer:
# an underestimate for English and LaTeX (≈ 3.5–4.5), so a prompt sized this way fits.
CHARS_PER_TOKEN = 3


def template_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class ItemResult:
    """The rollouts of one template on one sample. `score` = mean of `scores`."""

    sample_id: str
    score: float
    completions: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    feedback: list[str] = field(default_factory=list)
    extracted: list[str | None] = field(default_factory=list)
    error: str | None = None


class EvaluationStore:
    """(template, sample id) → `ItemResult` for one phase, appended to a JSONL file for resume."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], ItemResult] = {}
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self._items[(row["template"], row["result"]["sample_id"])] = ItemResult(**row["result"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut by a crash: that pair is simply rolled out again

    def __len__(self) -> int:
        return len(self._items)

    def get(self, template: str, sample_id: str) -> ItemResult | None:
        return self._items.get((template_hash(template), sample_id))

    def put(self, template: str, result: ItemResult) -> None:
        key = (template_hash(template), result.sample_id)
        with self._lock:
            self._items[key] = result
            if self.path is not None:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"template": key[0], "result": asdict(result)}) + "\n")


@dataclass
class AdapterCounters:
    """What the adapter did; restored on resume through GEPA's adapter-state hooks."""

    policy_item_evals: int = 0  # (template, sample) pairs actually rolled out
    reused_item_evals: int = 0  # pairs answered from the store
    policy_requests: int = 0
    policy_request_errors: int = 0
    policy_prompt_tokens: int = 0
    policy_completion_tokens: int = 0
    reflection_calls: int = 0
    reflection_prompt_tokens: int = 0
    reflection_completion_tokens: int = 0
    reflection_cost_usd: float = 0.0  # the teacher's price as LiteLLM knows it
    reflection_cost_known: bool = True  # False once a reply came without a known price
    reflection_errors: int = 0
    outputs_cut: int = 0  # outputs shortened to fit the reflection model's context
    proposals_valid: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # phase seconds of earlier (interrupted) runs


def prompt_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The prompt x as the reflection model reads it: the user content, or every turn labelled."""
    if len(messages) == 1:
        return str(messages[0].get("content", ""))
    return "\n\n".join(f"[{m.get('role')}]\n{m.get('content', '')}" for m in messages)


def cut_middle(text: str, keep: int) -> str:
    """`text` with its middle cut out so that `keep` characters remain, the cut marked."""
    if len(text) <= keep:
        return text
    head = keep // 2
    tail = keep - head
    marker = f"\n[... {len(text) - keep} characters cut here to fit the reflection model's context ...]\n"
    return text[:head] + marker + (text[-tail:] if tail else "")


def fit_outputs(lengths: list[int], excess: int) -> list[int]:
    """New lengths that remove `excess` characters, taking from the longest outputs first (the
    shortest stay whole); every output keeps at least 200 characters where it had them."""
    floor = 200
    out = list(lengths)
    while excess > 0:
        top = max(out) if out else 0
        if top <= floor:
            break
        tops = [i for i, n in enumerate(out) if n == top]
        second = max([n for n in out if n < top] + [floor])
        step = min(top - second, -(-excess // len(tops)))
        for i in tops:
            out[i] -= step
        excess -= step * len(tops)
    return out


def _mask(text: str, answer: str) -> str:
    a = answer.strip()
    if not a:
        return text
    return re.sub(r"(?<![A-Za-z0-9])" + re.escape(a) + r"(?![A-Za-z0-9])", "[withheld]", text)


class PolicyTemplateAdapter:
    """GEPA adapter over the policy server, the task verifier and a reflection model."""

    def __init__(
        self,
        *,
        program: TemplateProgram,
        task: Task,
        client: PolicyClient,
        reflector: Reflector,
        meta_prompt: MetaPrompt,
        samples_per_item: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 512,
        num_threads: int = 8,
        include_gold: bool = True,
        proposal_max_chars: int = 4000,
        max_input_tokens: int = 30000,
        store: EvaluationStore | None = None,
        log_dir: Path | None = None,
        on_item: Callable[[int], None] | None = None,
    ):
        self.program = program
        self.task = task
        self.client = client
        self.reflector = reflector
        self.meta_prompt = meta_prompt
        self.samples_per_item = samples_per_item
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.include_gold = include_gold
        self.proposal_max_chars = proposal_max_chars
        self.max_input_tokens = max_input_tokens
        self.fatal: Exception | None = None  # a reflection model that cannot work: the phase stops
        self.store = store if store is not None else EvaluationStore(None)
        self.log_dir = log_dir
        self.on_item = on_item
        self.component = program.predictor_name
        self.dspy_adapter = TemplateAdapter(task.build_messages)
        self.counters = AdapterCounters()
        self._pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="p2o-policy")
        self._lock = threading.Lock()
        self._shown: dict[str, list[str]] = {}  # template hash -> gold answers shown with it
        self._proposed: set[str] = set()
        self._consecutive_reflection_errors = 0
        self._usage_base = (0, 0, 0, 0)
        self._started = time.monotonic()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ evaluation

    def _renderer(self, template: str) -> Callable[[str], list[dict[str, str]]]:
        """problem -> x̃ under `template`, as the DSPy call below sends it (the trainer's rendering)."""
        return lambda problem: self.program.render(self.task.build_messages, problem, template)

    def _one(self, predictor: Any, sample: Sample) -> tuple[str, float, str, str | None, str | None]:
        """(completion, score, feedback, extracted, request error) for one rollout: one DSPy call."""
        try:
            prediction = self.client.predict(
                predictor,
                self.program.inputs(sample.problem),
                adapter=self.dspy_adapter,
                temperature=self.temperature,
                max_tokens=self.max_tokens,
            )
        except PolicyRequestError as e:
            return "", 0.0, f"The policy server rejected the request: {e}", None, str(e)
        return self._judge(str(prediction.get(self.program.output_field) or ""), sample)

    def _judge(self, text: str, sample: Sample) -> tuple[str, float, str, str | None, str | None]:
        try:
            v = self.task.verifier(text, sample.answer)
            return text, float(v.score), v.feedback, v.extracted, None
        except Exception as e:  # a verifier must not raise; if it does, this sample scores 0
            return text, 0.0, f"The verifier failed on this output: {type(e).__name__}: {e}", None, None

    def _rollout_batched(self, template: str, samples: Sequence[Sample]) -> list[list[tuple]]:
        """All rollouts of `samples` under `template` as one batched generation (a client with
        `chat_many`: the training model in process). The prompts are the template program's own
        rendering, x̃ exactly as the DSPy call would send it."""
        render = self._renderer(template)
        outs = self.client.chat_many(
            [render(s.problem) for s in samples],
            n=self.samples_per_item,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
        )
        return [[self._judge(c.text, s) for c in row] for s, row in zip(samples, outs, strict=True)]

    def rollout(self, template: str, samples: Sequence[Sample]) -> list[ItemResult]:
        """Roll the policy out on T(x, z) for `samples`, `samples_per_item` times each: one batched generation
        in process, or concurrent requests to a server."""
        results: list[ItemResult | None] = [None] * len(samples)

        def finished(i: int, rolls: list[tuple]) -> None:  # stored at once: an interrupted phase keeps it
            results[i] = self._aggregate(samples[i], rolls)
            self.store.put(template, results[i])
            if self.on_item is not None:
                self.on_item(1)

        if hasattr(self.client, "chat_many"):
            for i, rolls in enumerate(self._rollout_batched(template, samples)):
                finished(i, rolls)
        else:
            # A rejected request or a verifier error scores its rollout 0 in `_one`; a server that
            # is down (PolicyServerError) stops the phase.
            predictor = self.program.predictor_with(template)
            thread_map(
                lambda s: self._one(predictor, s),
                samples,
                threads=self._pool,
                repeat=self.samples_per_item,
                on_item=finished,
            )
        out = [r for r in results if r is not None]
        all_failed = all(r.error for r in out)
        if len(samples) * self.samples_per_item >= 2 and all_failed:
            raise PolicyServerError(
                f"every request to the policy server at {self.client.base_url} (model {self.client.model!r}) "
                f"failed; first error: {out[0].error}"
            )
        with self._lock:
            self.counters.policy_item_evals += len(out)
        return out

    def _aggregate(self, sample: Sample, rolls: list[tuple]) -> ItemResult:
        # A sample whose requests all failed is scored 0 and not stored as a finished rollout.
        errors = [r[4] for r in rolls if r[4]]
        return ItemResult(
            sample_id=sample.sample_id,
            score=sum(r[1] for r in rolls) / len(rolls),
            completions=[r[0] for r in rolls],
            scores=[r[1] for r in rolls],
            feedback=[r[2] for r in rolls],
            extracted=[r[3] for r in rolls],
            error=errors[0] if len(errors) == len(rolls) else None,
        )

    def evaluate(
        self, batch: list[Sample], candidate: dict[str, str], capture_traces: bool = False
    ) -> EvaluationBatch:
        template = candidate[self.component]
        results: list[ItemResult | None] = [self.store.get(template, s.sample_id) for s in batch]
        reused = [r for r in results if r is not None and not r.error]
        todo = [i for i, r in enumerate(results) if r is None or r.error]
        if reused:
            with self._lock:
                self.counters.reused_item_evals += len(reused)
            if self.on_item is not None:
                self.on_item(len(reused))
        if todo:
            fresh = self.rollout(template, [batch[i] for i in todo])
            for i, r in zip(todo, fresh, strict=True):
                results[i] = r
        final = [r for r in results if r is not None]
        trajectories = (
            [{"sample": s, "template": template, "result": r} for s, r in zip(batch, final, strict=True)]
            if capture_traces
            else None
        )
        return EvaluationBatch(
            outputs=[r.completions[0] if r.completions else "" for r in final],
            scores=[r.score for r in final],
            trajectories=trajectories,
        )

    # ------------------------------------------------------------ reflection

    def feedback(self, sample: Sample, result: ItemResult) -> str:
        """The feedback line the reflection model reads for one sample."""
        if result.error:
            text = f"The policy could not be queried: {result.error}"
        elif len(result.scores) == 1:
            text = result.feedback[0]
        else:
            n_ok = sum(1 for s in result.scores if s >= 1.0)
            text = f"{n_ok} of {len(result.scores)} sampled answers were correct. First answer: {result.feedback[0]}"
        if not self.include_gold:
            return _mask(text, sample.answer)
        if sample.answer.strip() and sample.answer.strip() not in text:
            text = f"{text} The correct answer is {sample.answer.strip()}."
        return text

    def make_reflective_dataset(
        self,
        candidate: dict[str, str],
        eval_batch: EvaluationBatch,
        components_to_update: list[str],
    ) -> Mapping[str, Sequence[Mapping[str, Any]]]:
        records = []
        answers = []
        for traj in eval_batch.trajectories or []:
            sample: Sample = traj["sample"]
            result: ItemResult = traj["result"]
            output = result.completions[0] if result.completions else ""
            records.append(
                {
                    "Inputs": {
                        self.program.input_field: prompt_text(self.task.build_messages(sample.problem))
                    },
                    "Generated Outputs": output if output.strip() else "(empty output)",
                    "Feedback": self.feedback(sample, result),
                }
            )
            answers.append(sample.answer)
        self._shown[template_hash(candidate[self.component])] = answers
        return {name: records for name in components_to_update}

    def fit_prompt(self, current: str, records: list[Mapping[str, Any]]) -> str:
        """The reflection prompt, whole when it fits `max_input_tokens`; else the longest policy
        outputs are cut in the middle (marked) until it fits."""
        prompt = self.meta_prompt.render(current, records)
        budget = self.max_input_tokens * CHARS_PER_TOKEN
        if len(prompt) <= budget:
            return prompt
        outputs = [str(r.get("Generated Outputs", "")) for r in records]
        keep = fit_outputs([len(o) for o in outputs], len(prompt) - budget + 200 * len(records))
        cut = [dict(r) for r in records]
        for r, o, n in zip(cut, outputs, keep, strict=True):
            if n < len(o):
                r["Generated Outputs"] = cut_middle(o, n)
                with self._lock:
                    self.counters.outputs_cut += 1
        return self.meta_prompt.render(current, cut)

    def _log_proposal(self, row: dict[str, Any]) -> None:
        if self.log_dir is None:
            return
        with open(self.log_dir / "proposals.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def _reject(self, reason: str) -> None:
        with self._lock:
            self.counters.rejected[reason] = self.counters.rejected.get(reason, 0) + 1

    def propose_new_texts(
        self,
        candidate: dict[str, str],
        reflective_dataset: Mapping[str, Sequence[Mapping[str, Any]]],
        components_to_update: list[str],
    ) -> dict[str, str]:
        """Call the reflection model on the meta-prompt; return only proposals that pass validation."""
        out: dict[str, str] = {}
        for name in components_to_update:
            records = list(reflective_dataset.get(name) or [])
            if not records:
                continue
            current = candidate[name]
            answers = self._shown.pop(template_hash(current), [])
            prompt = self.fit_prompt(current, records)
            start = time.time()
            self.counters.reflection_calls += 1
            try:
                reply = self.reflector(prompt)
            except (PolicyServerError, ReflectionError) as e:
                self.fatal = e  # gepa swallows what this method raises: the stop condition reads it
                raise
            except Exception as e:  # one failed call: count it, let GEPA move on
                self._reject("reflection_error")
                self.counters.reflection_errors += 1
                self._consecutive_reflection_errors += 1
                self._log_proposal(
                    {
                        "time": start,
                        "parent": template_hash(current),
                        "reason": "reflection_error",
                        "detail": f"{type(e).__name__}: {str(e)[:500]}",
                    }
                )
                if self._consecutive_reflection_errors >= MAX_CONSECUTIVE_REFLECTION_ERRORS:
                    self.fatal = ReflectionError(
                        f"the reflection model ({self.reflector.name}) failed {self._consecutive_reflection_errors} "
                        f"times in a row; last error: {type(e).__name__}: {str(e)[:300]}",
                        fatal=not isinstance(e, TransientReflectionError | PolicyRequestError),
                    )
                    raise self.fatal from e
                continue
            self._consecutive_reflection_errors = 0
            self.counters.reflection_prompt_tokens += reply.prompt_tokens
            self.counters.reflection_completion_tokens += reply.completion_tokens
            if reply.cost_usd is None:  # no price: a self-hosted teacher, the policy, a script
                self.counters.reflection_cost_known = False
            else:
                self.counters.reflection_cost_usd += reply.cost_usd
            check = validate_proposal(
                reply.text,
                current=current,
                max_chars=self.proposal_max_chars,
                answers=answers,
                finish_reason=reply.finish_reason,
            )
            reason, detail = check.reason, check.detail
            if check.ok and check.text in self._proposed:
                reason, detail = "duplicate", "proposed before in this phase"
            self._log_proposal(
                {
                    "time": start,
                    "parent": template_hash(current),
                    "reason": reason,
                    "detail": detail,
                    "proposal": check.text,
                    "reply": reply.text[:4000],
                    "finish_reason": reply.finish_reason,
                }
            )
            if reason is not None:
                self._reject(reason)
                continue
            assert check.text is not None
            self._proposed.add(check.text)
            self.counters.proposals_valid += 1
            out[name] = check.text
        return out

    # ------------------------------------------------------------ state (resume)

    def stats(self) -> dict[str, Any]:
        """Counters including the client's token usage (cumulative over resumed runs)."""
        c = asdict(self.counters)
        u = self.client.usage
        base = self._usage_base
        c["policy_requests"] = base[0] + u.requests
        c["policy_request_errors"] = base[1] + u.errors
        c["policy_prompt_tokens"] = base[2] + u.prompt_tokens
        c["policy_completion_tokens"] = base[3] + u.completion_tokens
        c["rejected"] = dict(Counter(self.counters.rejected))
        c["seconds"] = round(self.counters.seconds + time.monotonic() - self._started, 3)
        return c

    def get_adapter_state(self) -> dict[str, Any]:
        return {"counters": self.stats(), "proposed": sorted(self._proposed)}

    def set_adapter_state(self, state: dict[str, Any]) -> None:
        saved = dict(state.get("counters") or {})
        if not saved:
            return
        current = self.counters
        self._usage_base = (
            saved.get("policy_requests", 0),
            saved.get("policy_request_errors", 0),
            saved.get("policy_prompt_tokens", 0),
            saved.get("policy_completion_tokens", 0),
        )
        # Work done since this run started (the seed re-scoring on resume) adds to the saved totals.
        for key in (
            "policy_item_evals",
            "reused_item_evals",
            "reflection_calls",
            "reflection_prompt_tokens",
            "reflection_completion_tokens",
            "reflection_cost_usd",
            "reflection_errors",
            "outputs_cut",
            "proposals_valid",
        ):
            setattr(current, key, saved.get(key, 0) + getattr(current, key))
        current.reflection_cost_known = bool(saved.get("reflection_cost_known", True)) and (
            current.reflection_cost_known
        )
        merged = Counter(saved.get("rejected") or {})
        merged.update(current.rejected)
        current.rejected = dict(merged)
        current.seconds = float(saved.get("seconds", 0.0))
        self._proposed.update(state.get("proposed") or [])
