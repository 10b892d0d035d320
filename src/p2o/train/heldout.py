"""Held-out accuracy during training: greedy, without instruction, on splits of the task's own data.

It goes through `p2o.evaluation.evaluate` on the in-memory policy, so a curve point and `p2o eval` on
the saved checkpoint measure the same thing. Points go to `output_dir/heldout.jsonl` and into TRL's
logs as `heldout/<split>`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

HELDOUT_FILE = "heldout.jsonl"


class HeldOutEval(TrainerCallback):
    def __init__(self, trainer: Any, splits: list[str], every_steps: int, batch_size: int = 64):
        self.trainer = trainer
        self.splits = splits
        self.every = every_steps
        self.batch_size = batch_size
        self.curve: list[dict[str, Any]] = []
        self.listeners: list[Any] = []  # called with each new point (the demo's live console line)
        self._last_step = -1

    def measure(self) -> dict[str, Any]:
        """`{split: accuracy, ..., "groups": {split: {group: accuracy}}}` (groups where the task
        labels its samples, `Task.group_of`)."""
        from p2o.evaluation import evaluate
        from p2o.evaluation.benchmarks import Benchmark
        from p2o.evaluation.generation import TransformersGenerator

        tr = self.trainer
        model = tr.accelerator.unwrap_model(tr.model)
        was_training = model.training
        model.eval()
        benches = [
            Benchmark(
                name=split,
                task=tr.task,
                split=split,
                n=1,
                temperature=0.0,
                max_tokens=tr.args.max_completion_length,
            )
            for split in self.splits
        ]
        try:
            gen = TransformersGenerator(
                model, tr.processing_class, label="policy", batch_size=self.batch_size
            )
            report = evaluate(
                gen,
                benches,
                progress=False,
                chat_template_kwargs=tr.args.chat_template_kwargs or tr.task.chat_template_kwargs or None,
            )
        finally:
            model.train(was_training)
        accs: dict[str, Any] = {split: report.accuracy("policy", split) for split in self.splits}
        groups = {split: report.result("policy", split).groups for split in self.splits}
        if any(groups.values()):
            accs["groups"] = groups
        return accs

    def _record(self, state) -> None:
        if state.global_step == self._last_step:
            return
        self._last_step = state.global_step
        if not self.trainer.accelerator.is_main_process:
            return
        t0 = time.perf_counter()
        accs = self.measure()
        point = {"step": state.global_step, **accs, "seconds": round(time.perf_counter() - t0, 2)}
        self.curve.append(point)
        path = Path(self.trainer.args.output_dir) / HELDOUT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(point) + "\n")
        for split in self.splits:
            self.trainer._metrics["train"][f"heldout/{split}"].append(accs[split])
        for listener in self.listeners:
            listener(point)

    def on_train_begin(self, args, state, control, **kwargs):
        self._record(state)

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self._record(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._record(state)
