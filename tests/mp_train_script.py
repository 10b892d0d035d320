"""Run under `accelerate launch --num_processes 2 --cpu`: a tiny P²O run whose phase (a scripted
stand-in that assigns two templates per hard sample) runs on the main process only. Each rank writes
what it holds so the test can compare ranks.

`mp_train_script.py MODEL OUT [PHASE_SECONDS DDP_TIMEOUT]`: the phase sleeps PHASE_SECONDS, with
collectives timing out after DDP_TIMEOUT seconds (a phase longer than the collective timeout).
`mp_train_script.py MODEL OUT in-process`: the real phase (GEPA, with a scripted reflection model)
against the training model itself (`policy_server: trainer`)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from p2o.config import P2OConfig
from p2o.tasks.data import to_dataset
from p2o.train.trainer import P2OTrainer, release_process_group
from tests.tiny_world import tiny_samples, tiny_task


@dataclass
class Result:
    templates: dict
    assignments: dict
    stats: dict = field(default_factory=dict)


PHASE_SECONDS = 0.0


def scripted_phase(config, task, hard_samples, policy, output_dir):
    import time

    import torch.distributed as dist

    assert not dist.is_initialized() or dist.get_rank() == 0, "the phase must run on the main process only"
    time.sleep(PHASE_SECONDS)
    return Result({"a": "HINT", "b": "think"}, {s.sample_id: ["a", "b"] for s in hard_samples})


def scripted_reflection(prompt: str) -> str:
    """Scripted reflection LM (a deterministic stand-in for a teacher): always the same proposal."""
    return "```\nHINT think step by step\n```"


def main(
    model: str,
    out: str,
    phase_seconds: float = 0.0,
    ddp_timeout: int = 1800,
    poll: float = 1.0,
    in_process: bool = False,
) -> int:
    global PHASE_SECONDS
    PHASE_SECONDS = phase_seconds
    if ddp_timeout != 1800:
        # transformers passes ddp_timeout to the process group on GPU only; on CPU the group is made
        # here, with the short timeout, and accelerate adopts it.
        import datetime

        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=ddp_timeout))
    cfg = P2OConfig(
        ddp_timeout=ddp_timeout,
        phase_wait_poll_seconds=poll,
        output_dir=out,
        per_device_train_batch_size=3,
        num_generations=2,
        max_completion_length=3,
        learning_rate=1e-3,
        max_steps=4,
        phase_every_steps=2,
        phase_after_last_step=True,
        min_hard_samples=1,
        hard_max_successes=1,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
        **(dict(policy_server="trainer", gepa_max_metric_calls=12) if in_process else {}),
    )
    task = tiny_task()
    samples = tiny_samples(6)
    trainer = P2OTrainer(
        model=model,
        task=task,
        args=cfg,
        train_dataset=to_dataset(task, samples),
        phase_runner=None if in_process else scripted_phase,
        reflection_lm=scripted_reflection if in_process else None,
    )
    used: list = []
    original = trainer._rollout

    def recording_rollout(prompts, tr):
        res = original(prompts, tr)
        used.append(list(zip(trainer._batch_sample_ids, res["p2o_template_id"], strict=True)))
        return res

    trainer.rollout_func = recording_rollout
    trainer.train()
    rank = trainer.accelerator.process_index
    Path(out, f"rank-{rank}.json").write_text(
        json.dumps(
            {
                "tracker": trainer.tracker.to_json(),
                "assignments": trainer.assignments,
                "templates": trainer.templates,
                "rounds": [r["n_hard"] for r in trainer.rounds],
                "rollouts": used,
                "world": trainer.accelerator.num_processes,
            },
            sort_keys=True,
        )
    )
    return rank


def finish(out: str, rank: int) -> None:
    """As `p2o train` ends: the trainer is gone (main returned), the group is destroyed and freed,
    since a live gloo group can abort the exit. Whether it was freed is written for the test."""
    Path(out, f"released-{rank}.json").write_text(json.dumps(release_process_group()))


if __name__ == "__main__":
    extra = sys.argv[3:]
    if extra == ["in-process"]:
        finish(sys.argv[2], main(sys.argv[1], sys.argv[2], in_process=True))
        sys.exit(0)
    args = (float(extra[0]), int(extra[1]), *map(float, extra[2:])) if extra else ()
    finish(sys.argv[2], main(sys.argv[1], sys.argv[2], *args))
