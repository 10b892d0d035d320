"""One prompt-evolution phase: GEPA against the live policy, then template assignment.

docs/design.md steps 3–5, top to bottom:

1. Split the hard samples into dev (min(`dev_max_size`, n // 2), as the authors do) and train,
   seeded.
2. GEPA (`gepa.optimize` with `PolicyTemplateAdapter`): seed = the program's seed template (the
   paper's is empty); Pareto candidate selection, reflection minibatch
   `gepa_reflection_minibatch_size`, strict-improvement acceptance, every accepted child scored on
   the full dev set, `gepa_max_metric_calls` budget. A metric call = one template scored on one hard
   sample (`gepa_samples_per_item` policy rollouts).
3. The score matrix (every accepted candidate × every dev sample) → greedy set cover → K =
   `num_generations` templates per hard sample (`p2o.evolve.assign`).

Outputs in `output_dir` (written atomically; a person can open each):

- `templates.json` — every accepted candidate: id, text, parent, per-dev-sample scores, mean;
- `assignments.json` — sample id → K template ids;
- `phase.json` — `dev_solved_frac_before` (the seed template's dev solve fraction),
  `dev_solved_frac_after` (fraction of dev samples solved by at least one candidate),
  `best_single` (the best one template alone), `metric_calls`, `reflection_calls`, `rejected` by
  reason, `seconds`, token counts, ...;
- `phase.png` — dev solve fraction (any candidate, best single) against metric calls;
- `programs/` — the evolved template program as DSPy program files (the module's own `save`,
  JSON): `best.json` (the best single template) and `<template id>.json` for every cover template.
  `p2o.templates.load_evolved(path)` gives one back ready to call; `p2o export` copies one out;
- `gepa/` — GEPA's run directory (its state, `evaluations.jsonl` with every rollout's score,
  `proposals.jsonl` with every reflection reply and its verdict, `gepa_log.txt`).

Running again on the same `output_dir` resumes: GEPA reloads its state, and rollouts already done are
read back from `evaluations.jsonl` instead of being generated again. A resume is refused when the
checkpoint or the hard samples differ from the first run's.

Departures from the paper: a template "solves" a dev sample when at least one of its rollouts there
succeeded (with the default one greedy rollout: when it succeeded); an empty template is never
assigned (it is no template); proposals are validated before GEPA may adopt them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2o.evolve.adapter import EvaluationStore, PolicyTemplateAdapter, template_hash
from p2o.evolve.assign import assign_templates, greedy_set_cover, mean_scores, solved_sets
from p2o.evolve.proposals import REJECTION_REASONS
from p2o.evolve.reflection import ReflectionError, Reflector, as_reflector, reflector_from_config
from p2o.files import atomic_path, write_json_atomic
from p2o.policy import PolicyServerError, RemotePolicy
from p2o.tasks.base import Sample, Task
from p2o.templates.meta_prompts import load_meta_prompt
from p2o.templates.programs import TemplateProgram, load_program

RUN_DIR = "gepa"
PROGRAMS_DIR = "programs"
MANIFEST = "p2o_run.json"


class PhaseError(ValueError):
    """A phase that cannot run as asked (no hard samples, a resume against other inputs)."""


@dataclass
class PhaseResult:
    """What a phase produced. `templates`: id → text (every accepted candidate, the seed included);
    `assignments`: sample id → K template ids; `stats`: the content of phase.json."""

    templates: dict[str, str]
    assignments: dict[str, list[str]]
    stats: dict[str, Any]
    cover: list[str] = field(default_factory=list)
    dev_ids: list[str] = field(default_factory=list)


def split_hard_samples(
    samples: list[Sample], *, dev_max_size: int, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """(dev, train): dev = min(`dev_max_size`, n // 2) samples (the authors' split), the rest train.

    Seeded and independent of input order. A single hard sample serves as both.
    """
    ordered = sorted(samples, key=lambda s: s.sample_id)
    random.Random(seed).shuffle(ordered)
    n = len(ordered)
    if n == 1:
        return list(ordered), list(ordered)
    n_dev = min(dev_max_size, max(1, n // 2))
    return ordered[:n_dev], ordered[n_dev:]


class _FileLogger:
    """GEPA's log lines go to a file: the terminal keeps the progress bar."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def log(self, *args: Any, **_: Any) -> None:
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(" ".join(str(a) for a in args) + "\n")


class _Progress:
    """A tqdm bar over the metric-call budget, fed by the adapter and GEPA's callbacks."""

    def __init__(self, total: int, enabled: bool, dev_size: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="evolve", unit="eval", disable=not enabled, dynamic_ncols=True)
        self.lock = threading.Lock()
        self.dev_size = dev_size
        self.solved: set[Any] = set()
        self.candidates = 0
        self.adapter: PolicyTemplateAdapter | None = None

    def advance(self, n: int) -> None:
        with self.lock:
            if self.bar.total is not None and self.bar.n + n > self.bar.total:
                self.bar.total = self.bar.n + n  # GEPA finishes its last iteration past the budget
            self.bar.update(n)

    def _postfix(self) -> None:
        rejected = sum(self.adapter.counters.rejected.values()) if self.adapter else 0
        self.bar.set_postfix_str(
            f"candidates={self.candidates} dev_solved={len(self.solved)}/{self.dev_size} rejected={rejected}",
            refresh=False,
        )

    def on_iteration_start(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.bar.n = event["state"].total_num_evals  # GEPA's count is the truth
            self._postfix()
            self.bar.refresh()

    def on_valset_evaluated(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.candidates += 1
            self.solved |= {k for k, v in event["scores_by_val_id"].items() if v > 0}
            self._postfix()

    def close(self) -> None:
        self.bar.close()


def weights_digest(path: Path, chunks: int = 1024, chunk_bytes: int = 1 << 16) -> str:
    """A digest of a weights file's content (its size and `chunks` evenly spread samples of 64 KiB):
    equal for the same weights saved again (file times differ), different for weights a step changed
    even when only some modules train (LoRA on two projections changes ~15% of a file: 1024 samples
    all missing it has odds below 1e-70), and 64 MiB read on a multi-GB file."""
    size = path.stat().st_size
    h = hashlib.sha1(str(size).encode())
    with path.open("rb") as f:
        step = max(1, size // chunks)
        for offset in range(0, size, step):
            f.seek(offset)
            h.update(f.read(chunk_bytes))
    return h.hexdigest()


def _checkpoint_fingerprint(policy: Any) -> dict[str, Any]:
    name = str(policy.model_name)
    p = Path(name)
    out: dict[str, Any] = {"model": name}
    if p.is_dir():
        out["weights"] = sorted(
            [f.name, weights_digest(f)] for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".pt")
        )
    return out


def _set_aside(output_dir: Path, why: str) -> Path:
    """Move an interrupted phase's outputs out of the way (kept for inspection, never reused)."""
    n = 1
    while (aside := output_dir.with_name(f"{output_dir.name}.stale-{n}")).exists():
        n += 1
    output_dir.rename(aside)
    (aside / "STALE.txt").write_text(why + "\n", encoding="utf-8")
    return aside


def _check_resume(run_dir: Path, manifest: dict[str, Any]) -> bool:
    path = run_dir / MANIFEST
    if not path.exists():
        write_json_atomic(path, manifest)
        return False
    old = json.loads(path.read_text(encoding="utf-8"))
    for key, what in (
        ("checkpoint", "policy checkpoint"),
        ("hard_sample_ids", "set of hard samples"),
        ("seed_template", "seed template"),
    ):
        if old.get(key) != manifest.get(key):
            raise PhaseError(
                f"{run_dir.parent} holds a phase run against a different {what} ({key} in {path} differs); "
                "resuming would mix two phases. Use a fresh --output-dir (or delete that one)."
            )
    return (run_dir / "gepa_state.bin").exists()


def _saved_result(run_dir: Path):
    """GEPA's result from the state it saved last (after a crash), or None."""
    from gepa.core.result import GEPAResult
    from gepa.core.state import GEPAState

    if not (run_dir / "gepa_state.bin").exists():
        return None
    return GEPAResult.from_state(GEPAState.load(str(run_dir)), run_dir=str(run_dir))


def _reflector(
    config: Any,
    reflection_lm: Any,
    policy: Any,
    initial_model: Any,
    log_dir: Path,
    chat_template_kwargs: dict[str, Any],
) -> tuple[Reflector, bool]:
    if reflection_lm is not None:
        return as_reflector(reflection_lm), False
    reflector = reflector_from_config(
        config,
        policy=policy,
        initial_model=initial_model,
        log_dir=log_dir,
        chat_template_kwargs=chat_template_kwargs,
    )
    return reflector, True


def _resolve_policy(policy: Any, config: Any, output_dir: Path) -> tuple[Any, bool]:
    """(policy, owned): a policy object as is; a `(url, model)` tuple or an object with `url` and
    `model_name` → `RemotePolicy`; a checkpoint path, or an object with `checkpoint` → a server
    launched for this phase only (owned: stopped at the end)."""
    from p2o.policy import open_policy

    if isinstance(policy, tuple):
        return RemotePolicy(*policy), False
    if hasattr(policy, "base_url") and hasattr(policy, "client"):
        return policy, False
    if getattr(policy, "url", None):
        return RemotePolicy(policy.url, policy.model_name or ""), False
    checkpoint = getattr(policy, "checkpoint", policy)
    if isinstance(checkpoint, str | Path):
        return open_policy(config, checkpoint, output_dir).start(), True
    raise TypeError(
        f"policy must be a PolicyServer, a RemotePolicy, a (url, model) tuple or a checkpoint path; got {policy!r}"
    )


def _check_unique(hard_samples: list[Sample]) -> None:
    ids = [s.sample_id for s in hard_samples]
    if not hard_samples:
        raise PhaseError("no hard samples: a phase needs at least one")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise PhaseError(f"hard samples must have unique sample_id values; {dup!r} appears more than once")


def _manifest(
    policy: Any, program: TemplateProgram, hard_samples: list[Sample], dev: list[Sample], train: list[Sample]
) -> dict[str, Any]:
    """What a resume must find unchanged (`p2o_run.json`): the weights, the hard set, the seed."""
    return {
        "checkpoint": _checkpoint_fingerprint(policy),
        "hard_sample_ids": sorted(s.sample_id for s in hard_samples),
        "seed_template": program.seed,
        "dev_ids": [s.sample_id for s in dev],
        "train_ids": [s.sample_id for s in train],
        "program": program.source,
    }


def _open_run(output_dir: Path, manifest: dict[str, Any], restart_if_changed: bool) -> bool:
    """Whether GEPA resumes a saved state in `output_dir`; a run against other inputs is refused, or
    (`restart_if_changed`) set aside for a fresh start."""
    run_dir = output_dir / RUN_DIR
    try:
        return _check_resume(run_dir, manifest)
    except PhaseError as e:
        if not restart_if_changed:
            raise
        aside = _set_aside(output_dir, f"set aside by a resumed run: {e}")
        print(
            f"p2o: {output_dir} held an unfinished phase against other inputs; moved to {aside}",
            file=sys.stderr,
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        return _check_resume(run_dir, manifest)


def _adapter(
    config: Any,
    program: TemplateProgram,
    task: Task,
    client: Any,
    reflector: Reflector,
    meta_prompt: Any,
    run_dir: Path,
    bar: _Progress,
) -> PolicyTemplateAdapter:
    adapter = PolicyTemplateAdapter(
        program=program,
        task=task,
        client=client,
        reflector=reflector,
        meta_prompt=meta_prompt,
        samples_per_item=config.gepa_samples_per_item,
        temperature=config.gepa_temperature,
        max_tokens=config.gepa_max_tokens or config.max_completion_length,
        num_threads=config.gepa_num_threads,
        include_gold=config.feedback_include_gold,
        proposal_max_chars=config.proposal_max_chars,
        max_input_tokens=getattr(config, "reflection_max_input_tokens", 30000),
        store=EvaluationStore(run_dir / "evaluations.jsonl"),
        log_dir=run_dir,
        on_item=bar.advance,
    )
    bar.adapter = adapter
    return adapter


class Patience:
    """GEPA stop condition (`gepa_patience`): `patience` iterations in a row in which the dev Pareto
    front (each dev sample's best score over the candidates) did not rise, or a front that is
    perfect on every dev sample (nothing left to improve). `stopped` says which fired."""

    def __init__(self, patience: int):
        self.patience = patience
        self.front: dict[Any, float] = {}
        self.stale = 0
        self.stopped: str | None = None

    def __call__(self, state: Any) -> bool:
        front = dict(state.pareto_front_valset)  # gepa's per-dev-sample best scores; a rename fails loudly
        if not front:
            return False
        if min(front.values()) >= 1.0:
            self.stopped = "dev_perfect"
        else:
            rose = any(v > self.front.get(k, float("-inf")) for k, v in front.items())
            self.stale = 0 if rose else self.stale + 1
            if self.stale >= self.patience:
                self.stopped = "patience"
        self.front = front
        return self.stopped is not None


def _optimize(
    config: Any,
    program: TemplateProgram,
    dev: list[Sample],
    train: list[Sample],
    adapter: PolicyTemplateAdapter,
    run_dir: Path,
    bar: _Progress,
    patience: Patience | None = None,
) -> Any:
    """`gepa.optimize` as the module docstring's step 2 describes it; GEPA's result."""
    import gepa

    return gepa.optimize(
        seed_candidate={program.predictor_name: program.seed},
        trainset=train,
        valset=dev,
        adapter=adapter,
        candidate_selection_strategy=config.gepa_candidate_selection,
        reflection_minibatch_size=config.gepa_reflection_minibatch_size,
        max_metric_calls=config.gepa_max_metric_calls,
        run_dir=str(run_dir),
        logger=_FileLogger(run_dir / "gepa_log.txt"),
        callbacks=[bar],
        # gepa swallows what propose_new_texts raises: stop on what the adapter recorded.
        stop_callbacks=[lambda _state: adapter.fatal is not None] + ([patience] if patience else []),
        seed=config.seed,
        perfect_score=1.0,
        skip_perfect_score=True,
        acceptance_criterion="strict_improvement",
        val_evaluation_policy="full_eval",
        cache_evaluation=False,  # p2o's own store: GEPA's mixes train and dev ids (gepa 0.1.4)
        track_best_outputs=False,
        raise_on_exception=True,
    )


def _phase_meta(
    error: Exception | None,
    *,
    resumed: bool,
    program: TemplateProgram,
    task: Task,
    reflector: Reflector,
    meta_prompt: Any,
    policy: Any,
) -> dict[str, Any]:
    """phase.json's description of the run: how it ended and what it ran with."""
    return {
        "status": "interrupted" if error else "complete",
        "error": str(error) if error else None,
        "resumed": resumed,
        "program": program.name,
        "program_source": program.source,
        "task": task.name,
        "seed_template": program.seed_name,
        "reflection": reflector.name,
        "meta_prompt": str(meta_prompt.path),
        "policy": {
            "backend": policy.backend,
            "base_url": policy.base_url,
            "model": policy.model_name,
        },
    }


def run_phase(
    config: Any,
    task: Task,
    hard_samples: list[Sample],
    policy: Any,
    output_dir: str | Path,
    reflection_lm: Any = None,
    progress: bool = True,
    *,
    program: TemplateProgram | None = None,
    initial_model: str | Path | None = None,
    restart_if_changed: bool = False,
) -> PhaseResult:
    """Run one prompt-evolution phase and write templates.json / assignments.json / phase.json.

    Args:
        config: a `P2OConfig` (the GEPA, reflection and K = `num_generations` fields are read).
        task: gives the prompt builder x and the verifier.
        hard_samples: the hard samples (unique `sample_id`s).
        policy: a started `PolicyServer` (the trainer keeps one and calls `use_checkpoint` before
            each phase), a `RemotePolicy`, a `(url, model_name)` tuple, or a checkpoint directory (a
            `transformers serve` is launched for this phase and stopped after it).
        output_dir: where outputs go; an existing phase there is resumed.
        reflection_lm: a reflector or `prompt -> str` callable; None = built from `config.reflection`
            (and closed at the end). `initial` needs `initial_model`: the frozen initial checkpoint.
        progress: show a progress bar.
        program: an already loaded template program (default: `load_program(config.program)`).
        restart_if_changed: when `output_dir` holds a phase run against other weights or other hard
            samples (a training run resumed from a checkpoint before that phase finished), set it
            aside as `<output_dir>.stale-N` and start afresh instead of raising `PhaseError`.

    Raises `PolicyServerError` / `ReflectionError` when the server or the reflection model fails for
    good — after writing what the phase finished (phase.json `status: interrupted`).
    """
    started = time.monotonic()
    output_dir = Path(output_dir)
    run_dir = output_dir / RUN_DIR
    run_dir.mkdir(parents=True, exist_ok=True)

    # Everything a user may have misconfigured is checked before any model is called.
    prog = program or load_program(config.program)
    meta_prompt = load_meta_prompt(config.meta_prompt)
    _check_unique(hard_samples)
    dev, train = split_hard_samples(hard_samples, dev_max_size=config.dev_max_size, seed=config.seed)
    with contextlib.ExitStack() as owned:
        policy, launched = _resolve_policy(policy, config, output_dir)
        if launched:
            owned.callback(policy.stop)
        resumed = _open_run(output_dir, _manifest(policy, prog, hard_samples, dev, train), restart_if_changed)
        policy.check_alive()

        template_kwargs = {
            **(task.chat_template_kwargs or {}),
            **(getattr(config, "chat_template_kwargs", None) or {}),
        }
        reflector, own_reflector = _reflector(
            config, reflection_lm, policy, initial_model, output_dir, template_kwargs
        )
        if own_reflector:
            owned.callback(reflector.close)
        client = policy.client(chat_template_kwargs=template_kwargs)
        bar = _Progress(config.gepa_max_metric_calls, progress, len(dev))
        adapter = _adapter(config, prog, task, client, reflector, meta_prompt, run_dir, bar)
        patience = Patience(config.gepa_patience) if config.gepa_patience else None

        # A server or reflection model that fails for good ends GEPA; what it saved last is kept.
        error: Exception | None = None
        train_scores: dict[str, dict[str, float]] = {}
        try:
            result = _optimize(config, prog, dev, train, adapter, run_dir, bar, patience)
            if adapter.fatal is not None:
                raise adapter.fatal
            if config.assign_score_all and train:
                train_scores = _score_cover_on_train(result, prog, dev, train, adapter)
        except (PolicyServerError, ReflectionError) as e:
            error = e
            result = _saved_result(run_dir)
        finally:
            bar.close()
            adapter.close()
            client.close()

        counters = adapter.stats()
        counters["seconds"] = round(counters["seconds"], 3)
        if result is None:
            assert error is not None
            stats = {"status": "failed", "error": str(error), "seconds": round(time.monotonic() - started, 3)}
            write_json_atomic(output_dir / "phase.json", stats)
            raise error
        meta = _phase_meta(
            error,
            resumed=resumed,
            program=prog,
            task=task,
            reflector=reflector,
            meta_prompt=meta_prompt,
            policy=policy,
        )
        meta["stopped"] = patience.stopped if patience else None
        phase = _finalize(
            result,
            config=config,
            program=prog,
            dev=dev,
            train=train,
            counters=counters,
            output_dir=output_dir,
            train_scores=train_scores,
            meta=meta,
        )
        if error is not None:
            raise error
        return phase


def _plot_progress(templates: list[dict[str, Any]], n_dev: int, stats: dict[str, Any], path: Path) -> None:
    """phase.png: dev solve fraction (any candidate / best single) against metric calls spent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the picture is a convenience; phase.json has the numbers
        return
    order = sorted(templates, key=lambda t: t["discovered_at_metric_calls"])
    xs, union, best = [], [], []
    solved: set[str] = set()
    top = 0
    for t in order:
        mine = {s for s, v in t["dev_scores"].items() if v > 0}
        solved |= mine
        top = max(top, len(mine))
        xs.append(t["discovered_at_metric_calls"])
        union.append(len(solved) / n_dev)
        best.append(top / n_dev)
    xs.append(stats["metric_calls"])
    union.append(union[-1])
    best.append(best[-1])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.step(xs, union, where="post", label="solved by any candidate")
    ax.step(xs, best, where="post", label="best single template")
    ax.set_xlabel("metric calls")
    ax.set_ylabel("dev samples solved")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{len(templates)} candidates, {stats['reflection_calls']} reflection calls")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


@dataclass
class _Candidates:
    """GEPA's accepted candidates scored on dev: per candidate its instruction, its template text z
    (the instruction and the program's demos) and its id; the score matrix (id → dev sample id →
    score), the ids of empty templates and the greedy cover."""

    instructions: list[str]
    texts: list[str]
    ids: list[str]
    matrix: dict[str, dict[str, float]]
    empty: set[str]
    cover: list[str]


def _candidates(result: Any, program: TemplateProgram, dev: list[Sample]) -> _Candidates:
    instructions = [c[program.predictor_name] for c in result.candidates]
    ids = [f"t{i}-{template_hash(t)[:6]}" for i, t in enumerate(instructions)]
    texts = [program.template(t) for t in instructions]
    dev_ids = [s.sample_id for s in dev]
    matrix = {
        ids[i]: {dev_ids[v]: float(score) for v, score in sorted(result.val_subscores[i].items())}
        for i in range(len(ids))
    }
    empty = {ids[i] for i, t in enumerate(texts) if not t.strip()}
    return _Candidates(instructions, texts, ids, matrix, empty, greedy_set_cover(matrix, exclude=empty))


def _score_cover_on_train(
    result: Any, program: TemplateProgram, dev: list[Sample], train: list[Sample], adapter: Any
) -> dict[str, dict[str, float]]:
    """`assign_score_all`: every cover template scored on the train-side hard samples."""
    cands = _candidates(result, program, dev)
    dev_ids = {s.sample_id for s in dev}
    rest = [s for s in train if s.sample_id not in dev_ids]
    out: dict[str, dict[str, float]] = {}
    instructions = dict(zip(cands.ids, cands.instructions, strict=True))
    for tid in cands.cover:
        batch = adapter.evaluate(rest, {program.predictor_name: instructions[tid]})
        out[tid] = {s.sample_id: float(v) for s, v in zip(rest, batch.scores, strict=True)}
    return out


def _save_programs(
    program: TemplateProgram,
    templates: list[dict[str, Any]],
    instructions: list[str],
    best: str,
    cover: list[str],
    task: str | None,
    folder: Path,
) -> None:
    """programs/best.json and programs/<id>.json (cover templates): DSPy program files."""
    folder.mkdir(parents=True, exist_ok=True)
    by_id = {t["id"]: (t, instr) for t, instr in zip(templates, instructions, strict=True)}
    for name, tid in [("best", best), *((tid, tid) for tid in cover)]:
        t, instruction = by_id[tid]
        info = {
            "template_id": tid,
            "task": task,
            "mean": t["mean"],
            "dev_solved": t["dev_solved"],
            "in_cover": t["in_cover"],
        }
        with atomic_path(folder / f"{name}.json") as tmp:
            program.save_evolved(tmp, instruction, **info)


def _template_records(
    result: Any,
    cands: _Candidates,
    solved: dict[str, set[str]],
    means: dict[str, float],
    train_scores: dict[str, dict[str, float]],
) -> list[dict[str, Any]]:
    """templates.json's rows: every accepted candidate with its parent, scores and discovery point."""
    ids, texts, instructions = cands.ids, cands.texts, cands.instructions
    return [
        {
            "id": ids[i],
            "text": texts[i],
            **({"instruction": instructions[i]} if instructions[i] != texts[i] else {}),
            "parent": ids[result.parents[i][0]]
            if result.parents[i] and result.parents[i][0] is not None
            else None,
            "mean": round(means[ids[i]], 6),
            "dev_solved": len(solved[ids[i]]),
            "in_cover": ids[i] in cands.cover,
            "discovered_at_metric_calls": result.discovery_eval_counts[i],
            "dev_scores": cands.matrix[ids[i]],
            **({"train_scores": train_scores[ids[i]]} if ids[i] in train_scores else {}),
        }
        for i in range(len(ids))
    ]


def _costs(counters: dict[str, Any]) -> dict[str, Any]:
    """phase.json's `tokens` and `cost`: what the phase cost (the paper's reviewers asked for it)."""
    return {
        "tokens": {
            "policy_prompt": counters["policy_prompt_tokens"],
            "policy_completion": counters["policy_completion_tokens"],
            "reflection_prompt": counters["reflection_prompt_tokens"],
            "reflection_completion": counters["reflection_completion_tokens"],
        },
        "cost": {
            "policy_tokens": counters["policy_prompt_tokens"] + counters["policy_completion_tokens"],
            "reflection_tokens": counters["reflection_prompt_tokens"]
            + counters["reflection_completion_tokens"],
            "reflection_usd": round(counters["reflection_cost_usd"], 6)
            if counters["reflection_cost_known"] and counters["reflection_calls"]
            else None,
            "seconds": counters["seconds"],
        },
    }


def _phase_stats(
    result: Any,
    cands: _Candidates,
    *,
    config: Any,
    counters: dict[str, Any],
    meta: dict[str, Any],
    best: str,
    hard_ids: list[str],
    n_dev: int,
    n_train: int,
    n_assigned: int,
    train_scores: dict[str, dict[str, float]],
    output_dir: Path,
) -> dict[str, Any]:
    """phase.json: solve fractions before and after, the budget spent, counters and costs."""
    solved, means = solved_sets(cands.matrix), mean_scores(cands.matrix)
    union = set().union(*solved.values()) if solved else set()
    rejected = {r: 0 for r in (*REJECTION_REASONS, "duplicate")}
    rejected.update(counters.get("rejected", {}))
    return {
        "status": meta["status"],
        "dev_solved_frac_before": len(solved[cands.ids[0]]) / n_dev,
        "dev_solved_frac_after": len(union) / n_dev,
        "best_single": {"id": best, "dev_solved_frac": len(solved[best]) / n_dev, "mean": means[best]},
        "metric_calls": result.total_metric_calls,
        "budget": config.gepa_max_metric_calls,
        # what ended GEPA before its budget (`gepa_patience`): "patience", "dev_perfect" or None
        "stopped": meta.get("stopped"),
        "assign_metric_calls": sum(len(v) for v in train_scores.values()),
        "train_solved_frac": (
            len(set().union(*solved_sets(train_scores).values())) / max(1, len(hard_ids) - n_dev)
            if train_scores
            else None
        ),
        "reflection_calls": counters["reflection_calls"],
        "rejected": rejected,
        "seconds": counters["seconds"],
        "hard_samples": len(hard_ids),
        "dev_size": n_dev,
        "train_size": n_train,
        "candidates": len(cands.ids),
        "proposals_valid": counters["proposals_valid"],
        "cover": cands.cover,
        "assigned_samples": n_assigned,
        "k": int(config.num_generations),
        "policy_item_evals": counters["policy_item_evals"],
        "reused_item_evals": counters["reused_item_evals"],
        "policy_requests": counters["policy_requests"],
        "policy_request_errors": counters["policy_request_errors"],
        **_costs(counters),
        "reflection_errors": counters["reflection_errors"],
        "outputs_cut": counters["outputs_cut"],
        "samples_per_item": config.gepa_samples_per_item,
        "temperature": config.gepa_temperature,
        **{k: v for k, v in meta.items() if k != "status"},
        "gepa_run_dir": str(output_dir / RUN_DIR),
    }


def _finalize(
    result: Any,
    *,
    config: Any,
    program: TemplateProgram,
    dev: list[Sample],
    train: list[Sample],
    counters: dict[str, Any],
    output_dir: Path,
    meta: dict[str, Any],
    train_scores: dict[str, dict[str, float]] | None = None,
) -> PhaseResult:
    """GEPA's result → the cover, K templates per hard sample, and every output file."""
    cands = _candidates(result, program, dev)
    dev_ids = [s.sample_id for s in dev]
    train_scores = train_scores or {}
    hard_ids = dev_ids + [s.sample_id for s in train if s.sample_id not in set(dev_ids)]
    assignments = assign_templates(
        cands.matrix,
        hard_ids,
        k=int(config.num_generations),
        seed=config.seed,
        exclude=cands.empty,
        cover=cands.cover,
        solved_on=train_scores,
        skip_unsolved=config.assign_score_all,
    )
    solved, means = solved_sets(cands.matrix), mean_scores(cands.matrix)
    best = max(cands.ids, key=lambda t: (len(solved[t]), means[t]))
    templates = _template_records(result, cands, solved, means, train_scores)
    stats = _phase_stats(
        result,
        cands,
        config=config,
        counters=counters,
        meta=meta,
        best=best,
        hard_ids=hard_ids,
        n_dev=len(dev_ids),
        n_train=len(train),
        n_assigned=len(assignments),
        train_scores=train_scores,
        output_dir=output_dir,
    )
    write_json_atomic(
        output_dir / "templates.json", {"component": program.predictor_name, "templates": templates}
    )
    write_json_atomic(output_dir / "assignments.json", assignments)
    write_json_atomic(output_dir / "phase.json", stats)
    _plot_progress(templates, len(dev_ids), stats, output_dir / "phase.png")
    _save_programs(
        program, templates, cands.instructions, best, cands.cover, meta.get("task"), output_dir / PROGRAMS_DIR
    )
    return PhaseResult(
        templates=dict(zip(cands.ids, cands.texts, strict=True)),
        assignments=assignments,
        stats=stats,
        cover=cands.cover,
        dev_ids=dev_ids,
    )
