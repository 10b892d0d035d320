"""Each round's templates, logged to the trackers in `report_to` where a person can open them.

The `p2o/*` scalars reach every tracker through TRL's own logging. What a round produced — the
templates GEPA evolved, how many hard samples each was assigned to, and the dev scores before and
after — is text, so `RoundTracking` writes it when the trainer reports a round (the trainer calls
`report_round(record)` on its callbacks, main process only):

- **tensorboard**: a markdown table under the text tag `p2o/round_templates`, at the round's
  global step, through the `SummaryWriter` of transformers' `TensorBoardCallback` (so it lands in
  the same run as the scalars: TensorBoard's TEXT tab);
- **trackio**: a table `p2o/round_templates` (round, template id, samples, text) with
  `train/global_step`, as TRL logs its completions table.

The same rows are in `output_dir/rounds/round-NNN/round.json` and `p2o_state.json` for any tracker.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

TAG = "p2o/round_templates"


def round_rows(record: dict[str, Any], templates: dict[str, str], assignments: dict[str, list[str]]):
    """(template id, samples assigned, text) for each template of the round `record` describes.

    Template ids are those of the trainer (`r<round>:<id>`); a sample counts once for each template
    among its K."""
    prefix = f"r{record['round']}:"
    counts: dict[str, int] = {}
    for tids in assignments.values():
        for tid in set(tids):
            counts[tid] = counts.get(tid, 0) + 1
    return [(tid, counts.get(tid, 0), text) for tid, text in templates.items() if tid.startswith(prefix)]


def round_markdown(record: dict[str, Any], rows: list[tuple[str, int, str]]) -> str:
    """The round as a line of figures and a table of its templates, in markdown."""
    head = f"**Round {record['round']}** at step {record['global_step']}: {record.get('status', '?')}"
    if record.get("status") == "done":
        ph = record.get("phase", {})
        head += (
            f"; {record.get('n_hard', 0)} hard samples, {record.get('n_templates', 0)} templates, "
            f"{record.get('n_assigned', 0)} samples assigned; dev solved "
            f"{ph.get('dev_solved_frac_before', '?')} → {ph.get('dev_solved_frac_after', '?')}; "
            f"{ph.get('metric_calls', '?')} metric calls; {record.get('seconds', 0):.1f} s"
        )
    elif record.get("reason") or record.get("error"):
        head += f" ({record.get('reason') or record.get('error')})"
    if not rows:
        return head
    lines = [head, "", "| template | samples | text |", "|---|---:|---|"]
    for tid, n, text in rows:
        cell = text.replace("|", "\\|").replace("\n", "<br>") if text else "*(empty)*"
        lines.append(f"| {tid} | {n} | {cell} |")
    return "\n".join(lines)


class RoundTracking(TrainerCallback):
    """Logs each round's templates to the trackers in `args.report_to` (see the module docstring).

    Needs the trainer for its template texts: `trainer.add_callback(RoundTracking(trainer))`.
    """

    def __init__(self, trainer: Any):
        self.trainer = trainer

    def report_round(self, record: dict[str, Any]) -> None:
        report_to = self.trainer.args.report_to or []
        if isinstance(report_to, str):
            report_to = [report_to]
        rows = round_rows(record, self.trainer.templates, self.trainer.assignments)
        if "tensorboard" in report_to:
            self._tensorboard(record, rows)
        if "trackio" in report_to:
            self._trackio(record, rows)

    def _tensorboard(self, record: dict[str, Any], rows: list[tuple[str, int, str]]) -> None:
        from transformers.integrations import TensorBoardCallback

        for cb in self.trainer.callback_handler.callbacks:
            writer = getattr(cb, "tb_writer", None) if isinstance(cb, TensorBoardCallback) else None
            if writer is not None:
                writer.add_text(TAG, round_markdown(record, rows), record["global_step"])
                writer.flush()
                return

    def _trackio(self, record: dict[str, Any], rows: list[tuple[str, int, str]]) -> None:
        import pandas as pd
        import trackio

        frame = pd.DataFrame(
            [{"round": record["round"], "template": t, "samples": n, "text": text} for t, n, text in rows],
            columns=["round", "template", "samples", "text"],
        )
        # As transformers' TrackioCallback logs: its own step counter, the trainer's step alongside.
        trackio.log({TAG: trackio.Table(dataframe=frame), "train/global_step": record["global_step"]})
