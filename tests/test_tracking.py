"""Trackers, offline: a short P²O training with `report_to: tensorboard` (tiny random model, scripted
phase runner standing in for GEPA), then its event files are read back: the `p2o/*` scalars are there,
and each round's templates are a text entry a person can open in TensorBoard's TEXT tab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from p2o.train.tracking import TAG, RoundTracking, round_markdown, round_rows
from tests.tiny_world import TEMPLATE, build_tiny_model, tiny_samples, tiny_task

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@dataclass
class PhaseResult:
    templates: dict[str, str]
    assignments: dict[str, list[str]]
    stats: dict = field(default_factory=dict)


def scripted_phase(config, task, hard_samples, policy, output_dir):
    """A scripted stand-in for the GEPA phase: two templates, the first for every hard sample, the
    second (with characters a markdown table must escape) for the first one."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    k = config.num_generations
    ids = [s.sample_id for s in hard_samples]
    assignments = {sid: ["t0"] * k for sid in ids}
    assignments[ids[0]] = ["t0", "t1", "t1"][:k]
    return PhaseResult(
        {"t0": TEMPLATE, "t1": "a | b\nthen c"},
        assignments,
        {"metric_calls": 3, "dev_solved_frac_before": 0.0, "dev_solved_frac_after": 0.5},
    )


def event_data(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    texts: list[tuple[int, str]] = []
    for events in sorted(logdir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["tensors"]:
            if tag.startswith(TAG):
                texts += [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]
    return scalars, sorted(texts)


def train_tiny(tiny_model: Path, out: Path, **kw):
    """Four steps, a (scripted) phase every two steps, with the round tracker registered."""
    from p2o.config import P2OConfig
    from p2o.tasks.data import to_dataset
    from p2o.train.trainer import P2OTrainer

    task = tiny_task()
    args = P2OConfig(
        output_dir=str(out),
        per_device_train_batch_size=6,
        num_generations=3,
        max_completion_length=4,
        learning_rate=1e-3,
        max_steps=4,
        phase_every_steps=2,
        phase_after_last_step=True,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        min_hard_samples=1,
        hard_max_successes=1,
        disable_tqdm=True,
        **kw,
    )
    trainer = P2OTrainer(
        model=str(tiny_model),
        task=task,
        args=args,
        train_dataset=to_dataset(task, tiny_samples()),
        phase_runner=scripted_phase,
    )
    assert sum(isinstance(cb, RoundTracking) for cb in trainer.callback_handler.callbacks) == 1  # built in
    trainer.train()
    return trainer


def test_tensorboard_gets_the_p2o_scalars_and_each_rounds_templates(tiny_model, tmp_path):
    pytest.importorskip("tensorboard")
    train_tiny(tiny_model, tmp_path / "out", report_to=["tensorboard"])

    scalars, texts = event_data(tmp_path / "out")
    # TRL's logging puts the trainer's metrics under train/; every step logs P²O's own.
    for name in ("p2o/hard_count", "p2o/templated_frac", "p2o/hard_group_frac", "p2o/phase_seconds"):
        assert f"train/{name}" in scalars, sorted(scalars)
    assert [s for s, _ in scalars["train/p2o/hard_count"]] == [1, 2, 3, 4]
    assert max(v for _, v in scalars["train/p2o/templated_frac"]) > 0  # rounds 2+ generate from templates
    # One text entry per round, at the round's step, with the round's templates.
    assert [step for step, _ in texts] == [2, 4]
    for (step, text), rnd in zip(texts, (1, 2), strict=True):
        assert text.startswith(f"**Round {rnd}** at step {step}: done;")
        assert "dev solved 0.0 → 0.5" in text
        assert f"| r{rnd}:t0 | 4 | {TEMPLATE} |" in text  # all four (hard) samples
        assert f"| r{rnd}:t1 | 1 | a \\| b<br>then c |" in text
    rounds = json.loads((tmp_path / "out" / "p2o_state.json").read_text())["rounds"]
    assert [r["n_templates"] for r in rounds] == [2, 2]


def test_round_markdown_says_why_a_round_has_no_templates():
    skipped = {"round": 3, "global_step": 6, "status": "skipped", "reason": "0 hard < min_hard_samples=1"}
    assert round_rows(skipped, {"r1:t0": "x"}, {"s0": ["r1:t0"]}) == []
    assert round_markdown(skipped, []) == "**Round 3** at step 6: skipped (0 hard < min_hard_samples=1)"
    done = {"round": 1, "global_step": 2, "status": "done", "n_hard": 1, "n_templates": 1, "n_assigned": 1}
    rows = round_rows(done, {"r1:t0": ""}, {"s0": ["r1:t0", "r1:t0"]})
    assert rows == [("r1:t0", 1, "")]
    assert round_markdown(done, rows).endswith("| r1:t0 | 1 | *(empty)* |")


TRACKIO_RUN = """
import json, sys
from pathlib import Path
from tests.test_tracking import train_tiny
train_tiny(Path(sys.argv[1]), Path(sys.argv[2]), report_to=["trackio"], project="p2o-test", run_name="tiny")
from trackio.sqlite_storage import SQLiteStorage
print(json.dumps(SQLiteStorage.get_logs("p2o-test", "tiny")))
"""


def test_trackio_local_gets_the_p2o_scalars_and_each_rounds_templates(tiny_model, tmp_path):
    """trackio in its local mode (no Space: a SQLite file under $TRACKIO_DIR), in a process of its own
    because trackio reads TRACKIO_DIR once, on import. Skipped without trackio (the `track` extra), which
    `make test` does not install: it needs pillow < 13."""
    pytest.importorskip("trackio")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKIO_")}
    env["TRACKIO_DIR"] = str(tmp_path / "trackio")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    out = subprocess.run(
        [sys.executable, "-c", TRACKIO_RUN, str(tiny_model), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "trackio" / "p2o-test.db").is_file()
    logs = json.loads(out.stdout.strip().splitlines()[-1])
    keys = {k for row in logs for k in row}
    for name in ("p2o/hard_count", "p2o/templated_frac", "p2o/phase_seconds"):
        assert f"train/{name}" in keys, sorted(keys)
    tables = [row[TAG] for row in logs if TAG in row]
    assert [row["train/global_step"] for row in logs if TAG in row] == [2, 4]  # one per round
    for rnd, table in enumerate(tables, 1):
        rows = table["_value"]
        assert {(r["round"], r["template"], r["samples"]) for r in rows} == {
            (rnd, f"r{rnd}:t0", 4),
            (rnd, f"r{rnd}:t1", 1),
        }
        assert TEMPLATE in {r["text"] for r in rows}
