"""A rich one-line-per-event view of the run: phases as they start and finish, and the P²O metrics
at each log step (TRL's own progress bar shows the steps)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from transformers import TrainerCallback


class RoundDisplay(TrainerCallback):
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._rounds_seen = 0

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if not state.is_world_process_zero or not logs or "reward" not in logs:
            return
        parts = [f"[bold]step {state.global_step}[/]", f"reward {logs['reward']:.3f}"]
        for key, label in (
            ("p2o/templated_frac", "templated"),
            ("p2o/reward_templated", "r(templ)"),
            ("p2o/reward_plain", "r(plain)"),
            ("p2o/hard_count", "hard"),
            ("p2o/crm_masked_frac", "crm-masked"),
            ("frac_reward_zero_std", "zero-std"),
        ):
            if key in logs:
                v = logs[key]
                parts.append(f"{label} {v:.0f}" if key == "p2o/hard_count" else f"{label} {v:.2f}")
        self.console.print("  ".join(parts))

    def phase_started(self, index: int, n_hard: int, step: int) -> None:
        self.console.print(
            f"[cyan]round {index}[/] @ step {step}: prompt-evolution phase on {n_hard} hard samples…"
        )

    def phase_failed(self, index: int, error: str) -> None:
        self.console.print(f"[red]round {index}: the phase failed:[/] {escape(error)}")

    def phase_retry(self, attempt: int, error: str) -> None:
        self.console.print(f"[yellow]phase attempt {attempt} failed, retrying:[/] {escape(error)}")

    def report_round(self, record: dict[str, Any]) -> None:
        ph = record.get("phase", {})
        if record.get("status") == "done":
            self.console.print(
                f"[green]round {record['round']}[/] @ step {record['global_step']}: {record['n_hard']} hard → "
                f"{record.get('n_templates', 0)} templates, {record.get('n_assigned', 0)} samples assigned; "
                f"dev solved {ph.get('dev_solved_frac_before', '?')} → {ph.get('dev_solved_frac_after', '?')}; "
                f"{ph.get('metric_calls', '?')} metric calls, {record['seconds']:.1f} s"
            )
        elif record.get("status") == "skipped":
            self.console.print(
                f"[yellow]round {record['round']}[/] @ step {record['global_step']}: skipped ({escape(str(record.get('reason')))})"
            )
