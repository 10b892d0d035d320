"""`p2o demo [--quick] [--seeds 0,1,...] [--output_dir DIR]`: the paper's comparison in miniature.

Every method trains the same freshly built toy policy for the same number of steps with the same
seed, from the recipe `configs/toy_p2o.yaml` (`--recipe`), and is measured the same way: greedy, without
instruction, on the toy world's held-out hard and easy problems (`p2o.evaluation`, as `p2o eval` does),
in total and per operator.

- `grpo`: plain GRPO with K rollouts (no phases);
- `grpo_2k`: plain GRPO with 2K rollouts;
- `p2o_teacher`: P²O, Teacher-Ref with the scripted `toy-teacher`;
- `p2o_self`: P²O, Self-Ref (the live policy reflects on itself);
- `p2o_no_distill`: P²O with the loss on x̃ (the paper's "w/o context distillation").

`--quick` runs `grpo`, `grpo_2k` and `p2o_teacher`. With several worlds (`--seeds 2,3,4`) each world
gets its own folder (`seed-N/`, laid out as a one-world demo) and the top folder the summary over
worlds: mean, min and max per method, and the demo's targets checked world by world.

`--jobs 2` trains two methods at a time, each in its own process with half the CPUs (`run_parallel`);
GRPO and P²O (Teacher-Ref) start together, so the time ratio the targets check compares two runs
that shared the machine alike. The console shows one live line per method; everything a run prints
(TRL's metric dicts, warnings, the phase's progress) goes to `<world>/<method>/console.log`. A failed phase is named on the console,
and a P²O method whose phases fell short of `min_phase_success` (as `p2o train` judges it) makes the
demo exit 1 after every result is written: such a method trained as GRPO. Flags take underscores or dashes, and
`--config FILE` reads them from YAML (`p2o.cliutil`); the training recipe is `--recipe`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from p2o.files import write_json_atomic

METHODS: dict[str, dict[str, Any]] = {
    "grpo": {"max_phases": 0},
    "grpo_2k": {"max_phases": 0, "k_factor": 2},
    "p2o_teacher": {"reflection": "toy-teacher"},
    "p2o_self": {"reflection": "self"},
    "p2o_no_distill": {"reflection": "toy-teacher", "distill": False},
}
QUICK = ("grpo", "grpo_2k", "p2o_teacher")
DEFAULT_RECIPE = "toy_p2o"  # a recipe name, found as `p2o.resources` says (shipped with p2o)
PLAIN = ("grpo", "grpo_2k")

# The demo's claim, checked on every world (docs/toy.md, "The demo's targets").
TARGETS = {
    "p2o_hard_min": 0.8,  # P²O (Teacher-Ref) held-out hard accuracy at the end
    "grpo_hard_max": 0.05,  # GRPO and GRPO-2K: they starve on hard samples
    "easy_end_min": 0.9,  # every method, held-out easy accuracy at the end
    "easy_way_min": 0.85,  # every method, at every held-out point on the way
    "p2o_time_ratio_max": 1.3,  # P²O training time over GRPO's, same world, same run
}


def load_recipe(path: Path) -> dict[str, Any]:
    import yaml

    if not path.exists():
        raise FileNotFoundError(f"demo recipe {path} not found; pass --recipe FILE")
    return yaml.safe_load(path.read_text()) or {}


# ---------------------------------------------------------------------------------------- console


class QuietCallback:
    """A trainer callback that ignores every event it does not define (transformers calls each
    `on_*` by name; importing its `TrainerCallback` here would load transformers for `--help`)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


class MethodLine(QuietCallback):
    """One console line for a method's run, fed by the trainer's callbacks and phase events. A
    `rich.live.Live` shows it (it renders itself afresh at each refresh); in a worker process of a
    parallel demo `RemoteLine` sends its state to the parent's copy instead."""

    STATE = ("step", "reward", "hard", "easy", "event", "rounds")

    def __init__(self, name: str, max_steps: int):
        self.name = name
        self.max_steps = max_steps
        self.step = 0
        self.reward: float | None = None
        self.hard: float | None = None
        self.easy: float | None = None
        self.event = ""
        self.rounds = {"done": 0, "skipped": 0, "failed": 0}
        self.t0: float | None = None  # None: waiting for a free job
        self.seconds: float | None = None  # set when the run ends: the clock stops

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def finish(self, event: str | None = None) -> None:
        self.seconds = time.perf_counter() - self.t0 if self.t0 is not None else 0.0
        if event is not None:
            self.event = event

    def state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.STATE}

    def render(self) -> Any:
        from rich.text import Text

        if self.t0 is None:
            return Text(f"{self.name:<15} {self.event or 'waiting for a free job'}")
        parts = [f"{self.name:<15} step {self.step:>4}/{self.max_steps}"]
        if self.reward is not None:
            parts.append(f"reward {self.reward:.2f}")
        if self.hard is not None:
            parts.append(f"held-out hard {self.hard:.3f} easy {self.easy:.3f}")
        if any(self.rounds.values()):
            parts.append("rounds " + " ".join(f"{v} {k}" for k, v in self.rounds.items() if v))
        if self.event:
            parts.append(self.event)
        seconds = self.seconds if self.seconds is not None else time.perf_counter() - self.t0
        parts.append(f"{seconds:.0f} s")
        return Text("  ".join(parts))

    def __rich__(self) -> Any:
        return self.render()

    def changed(self) -> None:
        """Called after every update (the parent's `Live` redraws by itself)."""

    # trainer callbacks (transformers' TrainerCallback protocol, duck-typed) ---------------------
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            self.reward = float(logs["reward"])
        self.step = state.global_step
        self.changed()

    def on_step_end(self, args, state, control, **kwargs):
        self.step = state.global_step
        self.changed()

    def heldout_point(self, point: dict[str, Any]) -> None:
        self.hard, self.easy = point.get("test_hard"), point.get("test_easy")
        self.changed()

    # phase events (`P2OTrainer._notify`) ----------------------------------------------------------
    def phase_started(self, index: int, n_hard: int, step: int) -> None:
        self.event = f"round {index}: evolving templates for {n_hard} hard samples…"
        self.changed()

    def report_round(self, record: dict[str, Any]) -> None:
        status = str(record.get("status"))
        self.rounds[status] = self.rounds.get(status, 0) + 1
        if status == "done":
            self.event = (
                f"round {record['round']}: {record.get('n_templates', 0)} templates → "
                f"{record.get('n_assigned', 0)} samples"
            )
        elif status == "failed":
            self.event = f"round {record['round']} failed: {record.get('error')}"
        else:
            self.event = ""
        self.changed()


class RemoteLine(MethodLine):
    """A `MethodLine` in a worker process: each update goes to the parent through `queue`. Before
    each step it also takes up the torch thread count the parent sets in `threads` (a shared
    integer): when the runs beside it end, the last one gets their CPUs."""

    def __init__(self, name: str, max_steps: int, queue: Any, threads: Any = None):
        super().__init__(name, max_steps)
        self.queue = queue
        self.threads = threads

    def changed(self) -> None:
        self.queue.put(("line", self.name, self.state()))

    def on_step_begin(self, args, state, control, **kwargs):
        if self.threads is not None:
            import torch

            n = int(self.threads.value)
            if n >= 1 and n != torch.get_num_threads():
                torch.set_num_threads(n)


class Lines:
    """Several `MethodLine`s under one `Live`, in the order given."""

    def __init__(self, lines: list[MethodLine]):
        self.lines = lines

    def __rich__(self) -> Any:
        from rich.console import Group

        return Group(*(line.render() for line in self.lines))


class Elapsed:
    """A console line that says what is running and for how long; a `rich.live.Live` redraws it."""

    def __init__(self, text: str):
        self.text = text
        self.t0 = time.perf_counter()

    def __rich__(self) -> Any:
        from rich.text import Text

        return Text(f"{self.text} {time.perf_counter() - self.t0:.0f} s")


@contextlib.contextmanager
def elapsed_line(console: Any, text: str) -> Iterator[None]:
    """Show `text` and a running count of seconds while the block runs (the block's own output is
    redirected elsewhere)."""
    from rich.live import Live

    with Live(
        Elapsed(text), console=console, refresh_per_second=1, redirect_stdout=False, redirect_stderr=False
    ):
        yield
    if not console.is_terminal:
        console.line()


@contextlib.contextmanager
def captured_output(log_path: Path) -> Iterator[None]:
    """Send everything written to the process's stdout and stderr (Python, C libraries and child
    processes alike) to `log_path` while the block runs."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log_path.open("a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:  # Python-level streams too, wherever they point (a test runner replaces them)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def terminal_stream() -> TextIO:
    """A stream onto the terminal's stderr that stays there while `captured_output` redirects fd 2."""
    return os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")


# ---------------------------------------------------------------------------------------- one run


def method_config(name: str, recipe: dict[str, Any], seed: int, out: Path, overrides: dict[str, Any]):
    from p2o.config import P2OConfig

    spec = dict(METHODS[name])
    k_factor = spec.pop("k_factor", 1)
    fields = {k: v for k, v in recipe.items() if k not in ("task", "task_kwargs", "model_name_or_path")}
    fields.update(overrides)
    fields.update(spec)  # a method's defining settings win over overrides (grpo never runs a phase)
    fields["seed"] = seed
    fields["output_dir"] = str(out / name)
    fields.setdefault("heldout_eval", "test_hard,test_easy")
    fields.setdefault("report_to", "none")
    fields["disable_tqdm"] = True
    if k_factor != 1:  # same prompts per step, twice the rollouts
        fields["num_generations"] = fields.get("num_generations", 6) * k_factor
        fields["per_device_train_batch_size"] = fields.get("per_device_train_batch_size", 6) * k_factor
    return P2OConfig(**fields)


CONSOLE_LOG = "console.log"


def clear_method_dir(path: Path, keep: str | None = None) -> None:
    """Empty a method's folder (every demo run starts fresh), sparing the file `keep`: the run's
    console.log is open by then."""
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():
        if entry.name == keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def run_method(
    name: str,
    recipe: dict[str, Any],
    seed: int,
    out: Path,
    model: str,
    overrides: dict[str, Any],
    line: MethodLine | None = None,
) -> dict[str, Any]:
    """Train one method from the recipe and measure it. Returns its row of results.json."""
    from transformers import PrinterCallback, ProgressCallback

    from p2o.tasks import get_task
    from p2o.tasks.data import task_samples, to_dataset
    from p2o.train.trainer import P2OTrainer

    config = method_config(name, recipe, seed, out, overrides)
    clear_method_dir(out / name, keep=CONSOLE_LOG)  # old rounds would be taken for a resume
    task = get_task(recipe.get("task", "toy"), **{**(recipe.get("task_kwargs") or {}), "seed": seed})
    samples = task_samples(task, split="train").samples
    trainer = P2OTrainer(
        model=model,
        task=task,
        args=config,
        train_dataset=to_dataset(task, samples),
        samples={s.sample_id: s for s in samples},
        enable_phases=config.max_phases != 0,
        callbacks=[cb for cb in (line, LogFile(out / name / "log.jsonl")) if cb is not None],
    )
    for cb in (PrinterCallback, ProgressCallback):  # the metric dicts go to log.jsonl instead
        trainer.remove_callback(cb)
    if line is not None and trainer.heldout is not None:
        trainer.heldout.listeners.append(line.heldout_point)
    t0 = time.perf_counter()
    try:
        trainer.train()
    finally:
        if trainer._policy_server is not None:
            trainer._policy_server.stop()
    seconds = time.perf_counter() - t0
    from p2o.train.cli import phase_shortfall, phase_totals

    row = method_row(trainer, seconds)
    row["phases"] = phase_totals(trainer.rounds)
    row["phase_shortfall"] = phase_shortfall(row["phases"], config)
    return row


def method_row(trainer: Any, seconds: float) -> dict[str, Any]:
    """A trained method's row of results.json: held-out accuracy (at the end, on the way, per
    operator), time and where it went, and each round's record."""
    curve = trainer.heldout.curve if trainer.heldout else []
    last = curve[-1] if curve else {}
    zero_std = [h["frac_reward_zero_std"] for h in trainer.state.log_history if "frac_reward_zero_std" in h]
    metric_calls = sum(int(r.get("phase", {}).get("metric_calls", 0)) for r in trainer.rounds)
    timings = trainer.timings()
    easy = [p["test_easy"] for p in curve if "test_easy" in p]
    return {
        "hard_acc": last.get("test_hard"),
        "easy_acc": last.get("test_easy"),
        "easy_min": min(easy) if easy else None,
        "hard_acc_curve": [[p["step"], p["test_hard"]] for p in curve],
        "easy_acc_curve": [[p["step"], p["test_easy"]] for p in curve],
        "groups": merged_groups(last),
        "group_curves": [[p["step"], merged_groups(p)] for p in curve],
        "zero_std_frac": sum(zero_std) / len(zero_std) if zero_std else None,
        "train_seconds": round(seconds - timings.get("heldout", 0.0), 2),
        "phase_seconds": timings.get("phase", 0.0),
        "timings": timings,
        "gepa_metric_calls": metric_calls,
        "rounds": [
            {
                k: r.get(k)
                for k in ("round", "global_step", "status", "n_hard", "n_assigned", "seconds", "groups")
                if k in r
            }
            for r in trainer.rounds
        ],
        "steps": trainer.state.global_step,
    }


def merged_groups(point: dict[str, Any]) -> dict[str, float]:
    """A held-out point's per-operator accuracies, the splits merged (each operator is in one)."""
    out: dict[str, float] = {}
    for accs in (point.get("groups") or {}).values():
        out.update(accs)
    return dict(sorted(out.items()))


class LogFile(QuietCallback):
    """TRL's log dicts, one JSON line each (what `PrinterCallback` would print)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


# ---------------------------------------------------------------------------------------- in parallel

# Relative training time of each method on the toy world (GRPO = 1; `make demo` on 2 cores), for
# the order of a parallel run: the longest first, after the pair whose times are compared.
RELATIVE_COST = {"grpo": 1.0, "grpo_2k": 1.9, "p2o_teacher": 1.15, "p2o_self": 1.7, "p2o_no_distill": 2.0}
PAIRED = ("grpo", "p2o_teacher")  # side by side, so P²O's time over GRPO's compares like with like


def parallel_order(methods: list[str]) -> list[str]:
    """The order a parallel demo starts its methods in: GRPO and P²O (Teacher-Ref) first, side by
    side, then the rest longest first."""
    first = [n for n in PAIRED if n in methods] if all(n in methods for n in PAIRED) else []
    rest = sorted((n for n in methods if n not in first), key=lambda n: -RELATIVE_COST.get(n, 1.0))
    return first + rest


def threads_per_job(jobs: int) -> int:
    """Torch threads for each of `jobs` runs side by side: the CPUs this process may use, shared."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, jobs))


def sendable(error: BaseException) -> BaseException:
    """`error` if it survives pickling (to reach the parent process), else a RuntimeError that says it."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def method_process(
    name: str,
    recipe: dict[str, Any],
    seed: int,
    out: str,
    model: str,
    overrides: dict[str, Any],
    threads: int,
    max_steps: int,
    messages: Any,
    shared_threads: Any = None,
) -> None:
    """A worker process of a parallel demo: one method's run, its output in its console.log, its
    progress, row or error sent to the parent through `messages`; `threads` torch threads to start
    with, then as many as the parent sets in `shared_threads`."""
    from p2o.workers import die_with_parent

    die_with_parent()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    line = RemoteLine(name, max_steps, messages, shared_threads)
    try:
        with captured_output(Path(out) / name / CONSOLE_LOG):
            import torch

            torch.set_num_threads(threads)
            try:
                row = run_method(name, recipe, seed, Path(out), model, overrides, line)
            except BaseException:
                import traceback

                traceback.print_exc()  # the whole story in console.log
                raise
    except BaseException as e:
        messages.put(("error", name, sendable(e)))
        return
    messages.put(("done", name, row))


def run_parallel(
    methods: list[str],
    seed: int,
    out: Path,
    recipe: dict[str, Any],
    overrides: dict[str, Any],
    model: str,
    console: Any,
    jobs: int,
    max_steps: int,
    finished: Any,
) -> None:
    """Run `methods` in up to `jobs` worker processes at a time (`threads_per_job` torch threads
    each), one live line per method. `finished(name, row)` takes each row as it comes. A method that
    fails is said at once; the ones running finish, no new one starts, and its error is raised."""
    import multiprocessing
    import queue

    from rich.live import Live
    from rich.markup import escape

    from p2o.workers import sigterm_as_exit

    ctx = multiprocessing.get_context("spawn")  # fork after torch's thread pools start can hang
    messages = ctx.Queue()
    lines = {n: MethodLine(n, max_steps) for n in methods}
    waiting = parallel_order(methods)
    running: dict[str, Any] = {}
    ended_at: dict[str, float] = {}  # a process that ended without its last message
    errors: dict[str, BaseException] = {}
    threads = threads_per_job(jobs)
    shared_threads = ctx.Value("i", threads, lock=False)  # what each run takes before its next step

    def share_cpus() -> None:
        # one run left and none waiting: it takes every CPU; otherwise the share of `jobs` runs
        alone = len(running) == 1 and not (waiting and not errors)
        shared_threads.value = threads_per_job(1) if alone else threads

    def started(name: str) -> None:
        if not console.is_terminal:  # a log file gets a line per event instead of a live display
            console.print(f"{name}: started ({threads} torch thread{'s' if threads > 1 else ''})")

    def failed(name: str, error: BaseException) -> None:
        running.pop(name).join()
        share_cpus()
        lines[name].finish(f"failed: {type(error).__name__}")
        errors[name] = error
        console.print(
            f"[red]{name} failed: {escape(f'{type(error).__name__}: {error}')}[/] "
            f"(its output: {out / name / CONSOLE_LOG})"
        )

    live: Any = (
        Live(
            Lines([lines[n] for n in methods]),
            console=console,
            refresh_per_second=4,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        if console.is_terminal
        else contextlib.nullcontext()
    )
    try:
        with live, sigterm_as_exit():
            while running or (waiting and not errors):
                while waiting and not errors and len(running) < jobs:
                    name = waiting.pop(0)
                    clear_method_dir(out / name)
                    proc = ctx.Process(
                        target=method_process,
                        args=(
                            name,
                            recipe,
                            seed,
                            str(out),
                            model,
                            overrides,
                            threads,
                            max_steps,
                            messages,
                            shared_threads,
                        ),
                        name=f"p2o-demo-{name}",
                    )
                    proc.start()
                    running[name] = proc
                    lines[name].start()
                    started(name)
                share_cpus()
                try:
                    kind, name, payload = messages.get(timeout=0.5)
                except queue.Empty:
                    for name, proc in list(running.items()):
                        if proc.exitcode is None:
                            continue
                        ended_at.setdefault(name, time.perf_counter())
                        # a crash (exit code != 0) says nothing; give a clean exit's message 10 s
                        if proc.exitcode != 0 or time.perf_counter() - ended_at[name] > 10:
                            failed(name, RuntimeError(f"its process ended (exit code {proc.exitcode})"))
                    continue
                if kind == "line":
                    for k, v in payload.items():
                        setattr(lines[name], k, v)
                elif kind == "done":
                    running.pop(name).join()
                    share_cpus()
                    lines[name].finish()
                    if not console.is_terminal:
                        console.print(lines[name].render())
                    finished(name, payload)
                elif kind == "error":
                    failed(name, payload)
            for name in waiting:
                lines[name].event = "not run: a method before it failed"
                if not console.is_terminal:
                    console.print(lines[name].render())
    except BaseException:  # Ctrl-C, SIGTERM or the parent's own error: no orphans left training
        for proc in running.values():
            proc.terminate()
        for proc in running.values():
            proc.join()
        raise
    finally:
        messages.close()
    if errors:
        raise next(errors[n] for n in methods if n in errors)


# ---------------------------------------------------------------------------------------- a world


TOY_WORLD_OPTIONS = ("digits", "n_easy", "n_hard", "n_unknown")


def toy_world_options(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's toy-world options (`task_kwargs` digits, n_easy, n_hard, n_unknown): the policy
    must be built for the same world the task poses problems from."""
    kwargs = recipe.get("task_kwargs") or {}
    return {k: kwargs[k] for k in TOY_WORLD_OPTIONS if k in kwargs}


def check_model_world(model: str, seed: int, world_options: dict[str, Any]) -> None:
    """Refuse a toy policy built for another world than the task's (its `world.json`): it would
    train on problems it was never built for, and every figure would be meaningless."""
    from p2o.errors import UserError
    from p2o.toy import world as W

    f = Path(model) / "world.json"
    if not f.is_file():
        return
    built = json.loads(f.read_text(encoding="utf-8"))
    expected = json.loads(json.dumps(W.make_world(seed, **world_options).to_dict()))
    differ = [
        f"{k} {built.get(k)!r} vs {expected[k]!r}" if k in ("seed", "digits") else k
        for k in ("seed", "digits", "easy", "familiar", "hard", "unknown")
        if built.get(k) != expected[k]
    ]
    if differ:
        options = "".join(f", {k}={v}" for k, v in world_options.items())
        raise UserError(
            f"toy policy {model} was built for another world than the task's (world {seed}{options}): "
            f"{', '.join(differ)} differ. Build it for this world (p2o toy build --seed {seed} ...) "
            "or leave --model out"
        )


def build_report(model: str) -> dict[str, Any]:
    """A toy build's report.json, read once for `unfit_figures` and `build_summary` ({} for a policy
    without one)."""
    from p2o.toy.build import REPORT_FILE

    try:
        report = json.loads((Path(model) / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def unfit_figures(report: dict[str, Any]) -> list[str]:
    """What `p2o.toy.build.unlearned` finds wrong with a toy build's report ([] for an empty one)."""
    import dataclasses

    from p2o.toy.build import BuildSettings, settings_from, unlearned

    if not report:
        return []
    names = {f.name for f in dataclasses.fields(BuildSettings)}
    settings = report.get("settings")
    saved = {k: v for k, v in settings.items() if k in names} if isinstance(settings, dict) else {}
    try:
        return unlearned(report, settings_from("default", **saved))
    except (ValueError, TypeError):  # settings this version cannot read: nothing to compare with
        return []


def build_summary(report: dict[str, Any]) -> dict[str, Any]:
    """How a toy build came to be (steps, attempts, its checks), from its report."""
    keys = ("pretrain_steps", "attempts", "learned_checks", "discarded_attempts")
    return {k: report[k] for k in keys if k in report}


def run_world(
    methods: list[str],
    seed: int,
    out: Path,
    recipe: dict[str, Any],
    recipe_path: Path,
    overrides: dict[str, Any],
    model: str | None,
    console: Any,
    jobs: int = 1,
) -> dict[str, Any]:
    """Every method on one world (`jobs` at a time); writes `out/results.json`, `results.md`,
    `curves.png`."""
    from rich.live import Live
    from rich.markup import escape

    out.mkdir(parents=True, exist_ok=True)
    from p2o.toy import ensure_toy_model

    t0 = time.perf_counter()
    world_options = toy_world_options(recipe)
    given = model is not None
    if model is None:
        from p2o.toy.build import default_cache_dir, is_built, settings_from

        settings = settings_from("default", **world_options)
        cached = is_built(default_cache_dir(seed, settings), seed, settings)
        building = (
            f"world {seed}: building the toy policy (first use only, ~2–3 min, more if it starts over; "
            f"log: {out / 'build.log'})"
        )
        with (
            contextlib.nullcontext() if cached else elapsed_line(console, building),
            captured_output(out / "build.log"),
        ):
            # With worker processes anyway (jobs > 1), the build's attempts run side by side too, one
            # per thread (both start processes with spawn: a script must guard its entry point).
            side = 0 if jobs > 1 else 1
            model = str(ensure_toy_model(seed=seed, progress=False, attempts_at_once=side, **world_options))
    check_model_world(model, seed, world_options)
    report = build_report(model)
    build = build_summary(report)
    if given and (short := unfit_figures(report)):  # the user's choice, so said, not refused
        console.print(
            f"[yellow]world {seed}: toy policy {escape(model)} would be refused as a build of its own "
            f"({escape('; '.join(short))}); the demo's targets assume a fit one[/]"
        )
    restarted = f" (attempt {build['attempts']}; see its report.json)" if build.get("attempts", 1) > 1 else ""
    console.print(
        f"[bold]world {seed}[/]: toy policy ready in {time.perf_counter() - t0:.1f} s{restarted}: {model}"
    )
    results: dict[str, Any] = {
        "seed": seed,
        "recipe": str(recipe_path),
        "overrides": overrides,
        "model": model,
        "build": build,
        "methods": {},
    }
    max_steps = int(overrides.get("max_steps") or recipe.get("max_steps") or 0)

    def finished(name: str, row: dict[str, Any]) -> None:
        for r in row["phases"]["failed_rounds"]:  # a failed phase is said, not only counted
            console.print(
                f"[red]{name}: round {r['round']} (step {r['step']}) failed:[/] {escape(str(r['error']))}"
            )
        if row["phase_shortfall"]:
            console.print(f"[red]{name}: {row['phase_shortfall']}[/]")
        results["methods"][name] = row
        results["methods"] = {n: results["methods"][n] for n in methods if n in results["methods"]}
        results["steps"] = row["steps"]
        write_json_atomic(out / "results.json", results)  # after each method: a crash keeps them

    if jobs > 1 and len(methods) > 1:
        run_parallel(methods, seed, out, recipe, overrides, model, console, jobs, max_steps, finished)
    else:
        for name in methods:
            line = MethodLine(name, max_steps)
            clear_method_dir(out / name)
            line.start()
            with (
                Live(
                    line, console=console, refresh_per_second=4, redirect_stdout=False, redirect_stderr=False
                ),
                captured_output(out / name / CONSOLE_LOG),
            ):
                row = run_method(name, recipe, seed, out, model, overrides, line)
                line.finish()
            if not console.is_terminal:  # a live display ends its last line only on a terminal
                console.line()
            finished(name, row)
    results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(out / "results.json", results)
    (out / "results.md").write_text(results_markdown(results))
    plot_curves({seed: results}, out / "curves.png")
    return results


def results_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Toy world, seed {results['seed']}, {results['steps']} steps each; accuracies greedy, no instruction, held out.",
        "",
        "| method | hard acc | easy acc | lowest easy on the way | zero-std groups | train s | GEPA metric calls |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["methods"].items():
        zs = "—" if r["zero_std_frac"] is None else f"{r['zero_std_frac']:.2f}"
        lines.append(
            f"| {name} | {r['hard_acc']:.3f} | {r['easy_acc']:.3f} | {_f(r.get('easy_min'))} | {zs} | "
            f"{r['train_seconds']:.0f} | {r['gepa_metric_calls']} |"
        )
    labels = sorted({g for r in results["methods"].values() for g in r.get("groups", {})})
    if labels:
        names = list(results["methods"])
        lines += ["", "Per operator (role, symbol, rule), held out at the end:", ""]
        lines += ["| operator | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for g in labels:
            cells = [_f(results["methods"][n].get("groups", {}).get(g)) for n in names]
            lines.append(f"| {g} | " + " | ".join(cells) + " |")
    timed = {n: r["timings"] for n, r in results["methods"].items() if r.get("timings")}
    if timed:
        keys = ["generation", "generation_templated", "crm", "phase"]
        lines += ["", "Where the training time went (seconds; held-out evaluations excluded):", ""]
        lines += ["| method | train | " + " | ".join(keys) + " | rest |", "|---" * (len(keys) + 3) + "|"]
        for n, t in timed.items():
            train = results["methods"][n]["train_seconds"]
            rest = train - sum(t.get(k, 0.0) for k in ("generation", "crm", "phase"))
            lines.append(
                f"| {n} | {train:.1f} | "
                + " | ".join(f"{t.get(k, 0.0):.1f}" for k in keys)
                + f" | {rest:.1f} |"
            )
    return "\n".join(lines) + "\n"


def _f(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


# ---------------------------------------------------------------------------------------- worlds


def world_targets(world: dict[str, Any]) -> dict[str, bool | None]:
    """Each target on one world: True met, False missed, None not measured (its method did not run)."""
    m = world["methods"]
    t = TARGETS
    out: dict[str, bool | None] = {}
    p2o = m.get("p2o_teacher")
    out["p2o_hard"] = None if p2o is None else p2o["hard_acc"] >= t["p2o_hard_min"]
    plain = [m[n]["hard_acc"] for n in PLAIN if n in m]
    out["grpo_hard"] = None if not plain else all(h <= t["grpo_hard_max"] for h in plain)
    out["easy_end"] = all(r["easy_acc"] >= t["easy_end_min"] for r in m.values())
    out["easy_way"] = all((r.get("easy_min") or 0.0) >= t["easy_way_min"] for r in m.values())
    if p2o is not None and "grpo" in m:
        out["p2o_time"] = p2o["train_seconds"] <= t["p2o_time_ratio_max"] * m["grpo"]["train_seconds"]
    else:
        out["p2o_time"] = None
    return out


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "mean": round(sum(values) / len(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def summarize(worlds: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean, min and max per method over worlds, and the targets world by world."""
    methods = list(dict.fromkeys(n for w in worlds.values() for n in w["methods"]))
    per_method: dict[str, Any] = {}
    for n in methods:
        rows = [w["methods"][n] for w in worlds.values() if n in w["methods"]]
        ratio = [
            w["methods"][n]["train_seconds"] / w["methods"]["grpo"]["train_seconds"]
            for w in worlds.values()
            if n in w["methods"] and "grpo" in w["methods"]
        ]
        per_method[n] = {
            "worlds": len(rows),
            "hard_acc": spread([r["hard_acc"] for r in rows]),
            "easy_acc": spread([r["easy_acc"] for r in rows]),
            "easy_min": spread([r["easy_min"] for r in rows if r.get("easy_min") is not None]),
            "train_seconds": spread([r["train_seconds"] for r in rows]),
            "time_vs_grpo": spread(ratio),
        }
    targets = {str(s): world_targets(w) for s, w in worlds.items()}
    return {"methods": per_method, "targets": targets, "target_values": TARGETS}


def summary_markdown(worlds: dict[int, dict[str, Any]], summary: dict[str, Any]) -> str:
    seeds = ", ".join(str(s) for s in worlds)
    steps = next(iter(worlds.values())).get("steps")
    lines = [
        f"Toy worlds {seeds}, {steps} steps each; accuracies greedy, no instruction, held out.",
        "",
        "| method | hard acc mean [min, max] | easy acc mean [min, max] | lowest easy on the way | time / GRPO |",
        "|---|---|---|---|---|",
    ]
    for n, s in summary["methods"].items():
        lines.append(
            f"| {n} | {_spread(s['hard_acc'])} | {_spread(s['easy_acc'])} | "
            f"{_f((s['easy_min'] or {}).get('min'))} | {_spread(s['time_vs_grpo'], '×')} |"
        )
    names = list(summary["methods"])
    lines += ["", "Per world (hard / easy; time over GRPO's):", ""]
    lines += ["| world | " + " | ".join(names) + " | targets |", "|---" * (len(names) + 2) + "|"]
    for s, w in worlds.items():
        cells = []
        for n in names:
            r = w["methods"].get(n)
            if r is None:
                cells.append("—")
                continue
            cell = f"{r['hard_acc']:.3f} / {r['easy_acc']:.3f}"
            if n != "grpo" and "grpo" in w["methods"]:
                cell += f" ({r['train_seconds'] / w['methods']['grpo']['train_seconds']:.2f}×)"
            cells.append(cell)
        missed = [k for k, v in summary["targets"][str(s)].items() if v is False]
        lines.append(
            f"| {s} | "
            + " | ".join(cells)
            + f" | {'met' if not missed else 'missed: ' + ', '.join(missed)} |"
        )
    t = TARGETS
    lines += [
        "",
        f"Targets: P²O (p2o_teacher) hard ≥ {t['p2o_hard_min']}; GRPO and GRPO-2K hard ≤ {t['grpo_hard_max']}; "
        f"easy ≥ {t['easy_end_min']} for every method at the end and never below {t['easy_way_min']}; "
        f"P²O training time ≤ {t['p2o_time_ratio_max']}× GRPO's.",
    ]
    return "\n".join(lines) + "\n"


def _spread(s: dict[str, float] | None, unit: str = "") -> str:
    if not s:
        return "—"
    return f"{s['mean']:.3f}{unit} [{s['min']:.3f}, {s['max']:.3f}]"


def plot_curves(worlds: dict[int, dict[str, Any]], path: Path) -> None:
    """Held-out hard (solid) and easy (dotted) accuracy per method: one thin line per world, and
    the mean over worlds in bold when there are several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = list(dict.fromkeys(n for w in worlds.values() for n in w["methods"]))
    many = len(worlds) > 1
    for i, n in enumerate(methods):
        color = colors[i % len(colors)]
        for key, style in (("hard_acc_curve", "-"), ("easy_acc_curve", ":")):
            curves = [
                w["methods"][n][key] for w in worlds.values() if n in w["methods"] and w["methods"][n][key]
            ]
            for c in curves:
                ax.plot(
                    [p[0] for p in c],
                    [p[1] for p in c],
                    style,
                    color=color,
                    lw=0.8 if many else 1.6,
                    alpha=0.45 if many else 1.0,
                    marker=None if many else "o",
                    ms=3,
                    label=None if many else f"{n} ({key.split('_')[0]})",
                )
            if many and curves and all(len(c) == len(curves[0]) for c in curves):
                steps = [p[0] for p in curves[0]]
                mean = [sum(c[j][1] for c in curves) / len(curves) for j in range(len(steps))]
                ax.plot(steps, mean, style, color=color, lw=2.2, label=f"{n} ({key.split('_')[0]}, mean)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out accuracy (greedy, no instruction)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=7)
    seeds = ", ".join(str(s) for s in worlds)
    ax.set_title(f"P²O vs GRPO on the toy world{'s' if many else ''} {seeds}: hard solid, easy dotted")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_demo(
    methods: list[str],
    seeds: list[int] | int,
    out: Path,
    recipe_path: Path | None = None,
    overrides: dict | None = None,
    model: str | None = None,
    console: Any = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Every method on every world, `jobs` methods at a time (`run_parallel`). One world: its
    results in `out/`. Several: `out/seed-N/` each, and the summary over worlds in `out/`
    (results.json, results.md, curves.png)."""
    from rich.console import Console

    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    console = console or Console(file=terminal_stream())
    if recipe_path is None:
        from p2o.resources import find_recipe

        recipe_path = find_recipe(DEFAULT_RECIPE)
    recipe = load_recipe(recipe_path)
    overrides = overrides or {}
    out.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]p2o demo[/]: world{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; methods "
        f"{', '.join(methods)}; recipe {recipe_path}; each run's own output goes to "
        f"{out}/{'seed-N/' if len(seeds) > 1 else ''}<method>/console.log"
    )
    t0 = time.perf_counter()
    if len(seeds) == 1:
        world = run_world(methods, seeds[0], out, recipe, recipe_path, overrides, model, console, jobs)
        console.print(results_markdown(world))
        console.print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'curves.png'}")
        return world
    worlds: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        worlds[seed] = run_world(
            methods, seed, out / f"seed-{seed}", recipe, recipe_path, overrides, model, console, jobs
        )
        summary = summarize(worlds)  # after each world: a crash keeps the worlds done
        write_json_atomic(out / "results.json", {"seeds": list(worlds), "summary": summary, "worlds": worlds})
    results = {
        "seeds": seeds,
        "recipe": str(recipe_path),
        "overrides": overrides,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "summary": summary,
        "worlds": worlds,
    }
    write_json_atomic(out / "results.json", results)
    md = summary_markdown(worlds, summary)
    (out / "results.md").write_text(md)
    plot_curves(worlds, out / "curves.png")
    console.print(md)
    console.print(
        f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'curves.png'} and seed-N/ per world"
    )
    return results


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` or a range `2-8` (or both: `0,1,4-6`)."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if hi:
            seeds.extend(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(lo))
    if not seeds:
        raise ValueError("no seed given")
    return list(dict.fromkeys(seeds))


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`--set key=value` (YAML values) → {key: value}."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--set {item!r}: write KEY=VALUE, e.g. --set template_lifetime=round")
        parsed = yaml.safe_load(value)
        # YAML 1.1 reads 1e-3 (no dot in the mantissa) as a string
        if isinstance(parsed, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", parsed.strip()):
            parsed = float(parsed)
        out[key.strip().replace("-", "_")] = parsed
    return out


def main(argv: list[str] | None = None) -> int:
    from p2o.cliutil import parse_args, report_errors
    from p2o.resources import ResourceError, find_recipe

    p = argparse.ArgumentParser(prog="p2o demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="run " + ", ".join(QUICK) + " only")
    p.add_argument("--methods", help="comma-separated subset of: " + ", ".join(METHODS))
    p.add_argument("--seed", type=int, help="one toy world (world and training seed; default 0)")
    p.add_argument("--seeds", help="several worlds: 2,3,4 or 2-6; a summary over them is written")
    p.add_argument("--output_dir", default="runs/demo", help="where results go (default runs/demo)")
    p.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        help="training recipe: a YAML file or a recipe name (default toy_p2o, i.e. configs/toy_p2o.yaml)",
    )
    p.add_argument("--max_steps", type=int, help="override the recipe's max_steps (smoke runs)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one recipe setting for every method, e.g. --set template_lifetime=round (repeatable)",
    )
    p.add_argument("--model", help="a built toy policy directory (default: build or reuse the cached one)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="methods trained at a time, each in its own process with an equal share of the CPUs "
        "(default 1; make demo uses 2). GRPO and P²O run side by side, so their time ratio holds",
    )
    args = parse_args(p, argv)
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: give 1 or more")
    methods = list(QUICK) if args.quick else list(METHODS)
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        bad = [m for m in methods if m not in METHODS]
        if bad:
            p.error(f"--methods: unknown {', '.join(bad)}; choose from {', '.join(METHODS)}")
    if args.seed is not None and args.seeds:
        p.error("--seed and --seeds: give one of them")
    try:
        seeds = parse_seeds(args.seeds) if args.seeds else [0 if args.seed is None else args.seed]
    except ValueError as e:
        p.error(f"--seeds {args.seeds}: {e}; write e.g. 2,3,4 or 2-6")
    if args.model and len(seeds) > 1:
        p.error("--model: one built policy serves one world; leave it out with --seeds")
    if args.model and not (Path(args.model) / "config.json").is_file():
        p.error(
            f"--model {args.model}: no built toy policy there (make one with p2o toy build --output_dir DIR)"
        )
    try:
        recipe = find_recipe(args.recipe)
    except ResourceError as e:
        p.error(f"--recipe: {e}")
    try:
        overrides = parse_sets(args.set)
    except ValueError as e:
        p.error(str(e))
    if args.max_steps:
        overrides["max_steps"] = args.max_steps
    try:  # a wrong key or value fails here, before any world is built
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            method_config(methods[0], load_recipe(recipe), seeds[0], Path(args.output_dir), overrides)
    except Exception as e:
        p.error(f"recipe {recipe} with --set {', '.join(args.set) or '(none)'}: {e}")

    def demo() -> int:
        results = run_demo(
            methods, seeds, Path(args.output_dir), recipe, overrides, args.model, jobs=args.jobs
        )
        worlds = results.get("worlds") or {results["seed"]: results}
        short = [
            f"world {seed} {name}"
            for seed, world in worlds.items()
            for name, row in world["methods"].items()
            if row.get("phase_shortfall")
        ]
        if short:  # the results are written, but a P²O method that ran as GRPO is no result
            print(
                f"p2o demo: error: too few phases finished in {', '.join(short)} (see above)", file=sys.stderr
            )
            return 1
        return 0

    return report_errors("p2o demo", demo)


if __name__ == "__main__":
    sys.exit(main())
