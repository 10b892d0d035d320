"""Where a training run resumes from, and what of an interrupted run it keeps.

A checkpoint is a valid resume point only when it is complete: p2o writes its own state
(`p2o_trainer_state.json`) into the folder *before* TRL writes the model, optimizer and RNG states,
and TRL writes `trainer_state.json` last, so a folder whose `trainer_state.json` and p2o state both
read as JSON and that holds model weights was saved to the end. A folder a kill cut short is set
aside as `incomplete-checkpoint-N` (kept for inspection, never resumed from) and the newest complete
one is used.

A round whose phase finished after the checkpoint resumed from is not run again: when training
reaches its step, its templates and assignments are read back from `rounds/round-NNN/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2o.files import write_text_atomic

CHECKPOINT_STATE_FILE = "p2o_trainer_state.json"
TRAINER_STATE_FILE = "trainer_state.json"  # transformers' TRAINER_STATE_NAME, written last
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
PREFIX = "checkpoint-"


def checkpoint_step(folder: Path) -> int | None:
    name = folder.name
    if not name.startswith(PREFIX) or not name[len(PREFIX) :].isdigit():
        return None
    return int(name[len(PREFIX) :])


def _read_json(path: Path) -> tuple[Any, str | None]:
    if not path.is_file():
        return None, f"{path.name} is missing"
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path.name} is cut short or unreadable ({type(e).__name__})"


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint (None when it is one)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such folder"
    for name in (TRAINER_STATE_FILE, CHECKPOINT_STATE_FILE):
        data, problem = _read_json(folder / name)
        if problem:
            return problem
        if not isinstance(data, dict):
            return f"{name} does not hold a JSON object"
    # DeepSpeed keeps its (sharded) weights in global_stepN/, FSDP in pytorch_model_fsdp_*.
    weights = any((folder / w).is_file() for w in WEIGHT_FILES) or any(
        p.is_dir() and (p.name.startswith("global_step") or "pytorch_model_fsdp" in p.name)
        for p in folder.iterdir()
    )
    if not weights:
        return "no model weights in it"
    return None


@dataclass
class ResumePoint:
    """The newest complete checkpoint of `output_dir` (None: there is none) and the newer folders
    that were skipped, each with the reason."""

    checkpoint: Path | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def find_resume_point(output_dir: Path) -> ResumePoint:
    output_dir = Path(output_dir)
    folders = sorted(
        (p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None),
        key=lambda p: checkpoint_step(p) or 0,
        reverse=True,
    )
    skipped: list[tuple[Path, str]] = []
    for folder in folders:
        problem = checkpoint_problem(folder)
        if problem is None:
            return ResumePoint(folder, skipped)
        skipped.append((folder, problem))
    return ResumePoint(None, skipped)


def holds_a_run(output_dir: Path) -> bool:
    """Whether `output_dir` holds anything a p2o training run writes."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return False
    marks = ("p2o_state.json", "rounds", "train_summary.json", "heldout.jsonl")
    return any((output_dir / m).exists() for m in marks) or any(
        checkpoint_step(p) is not None for p in output_dir.iterdir()
    )


def set_aside(folder: Path) -> Path:
    """Rename an incomplete checkpoint to `incomplete-checkpoint-N[-k]`: TRL neither resumes from
    nor rotates such a name, and the step's next save starts from an empty folder."""
    n = 1
    aside = folder.with_name(f"incomplete-{folder.name}")
    while aside.exists():
        n += 1
        aside = folder.with_name(f"incomplete-{folder.name}-{n}")
    folder.rename(aside)
    return aside


def trim_jsonl(path: Path, keep) -> int:
    """Drop the rows of a JSON-lines file for which `keep(row)` is false (rows a resumed run will
    write again); returns how many were dropped. Unreadable lines are kept as they are."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            kept.append(line)
            continue
        if isinstance(row, dict) and not keep(row):
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        write_text_atomic(path, "".join(x + "\n" for x in kept))
    return dropped


def finished_round(
    round_dir: Path, global_step: int
) -> tuple[dict[str, str], dict[str, list[str]], dict, dict] | None:
    """(templates, assignments, phase stats, round record) of a round whose phase finished at
    `global_step` in an interrupted run (its `round.json` says done and its phase outputs are
    complete), else None."""
    record, problem = _read_json(round_dir / "round.json")
    if problem or not isinstance(record, dict):
        return None
    if record.get("status") != "done" or record.get("global_step") != global_step:
        return None
    evolve = round_dir / "evolve"
    loaded = [_read_json(evolve / n) for n in ("templates.json", "assignments.json", "phase.json")]
    if any(problem for _, problem in loaded):
        return None
    (templates, _), (assignments, _), (stats, _) = loaded
    if not (isinstance(templates, dict) and isinstance(assignments, dict) and isinstance(stats, dict)):
        return None
    texts = {str(t["id"]): str(t["text"]) for t in templates.get("templates", [])}
    if any(t not in texts for tids in assignments.values() for t in tids):
        return None
    return texts, {str(k): list(v) for k, v in assignments.items()}, stats, record
