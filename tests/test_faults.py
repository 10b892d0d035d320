"""Faults a run must survive or stop on, tried the way a user meets them: `p2o train` as a
subprocess on the first-word world (`tests/fault_world.py`: a tiny random Qwen3, a real
`transformers serve` for the phase, a scripted teacher behind a loopback OpenAI endpoint reached
through LiteLLM), killed with SIGKILL of its whole process group at the moment a file on disk marks,
then resumed and compared with an uninterrupted run of the same seed.

The quick tests at the end check the pieces of resuming (which checkpoint is complete, the shuffle
of a resumed epoch) without a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import UNLOCKING_TEMPLATE, build_tiny_policy
from tests.fault_world import ScriptedTeacher, write_world

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 240


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fault-world")
    policy = build_tiny_policy(root / "policy")
    return {"policy": policy, "data": write_world(policy, root / "train.jsonl", n=8)}


@pytest.fixture(scope="module")
def teacher():
    with ScriptedTeacher(f"```\n{UNLOCKING_TEMPLATE}\n```") as t:
        yield t


@pytest.fixture(scope="module")
def recipe(world, teacher, tmp_path_factory) -> Path:
    """8 problems, 4 per step (K = 3): the phase at step 2 sees all of them hard, templates are
    assigned, and step 3 (the second epoch) generates from them. A checkpoint at every step."""
    cfg = {
        "task": "tests.fault_world:make_task",
        "model_name_or_path": str(world["policy"]),
        "dataset": str(world["data"]),
        "seed": 0,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 1,
        "disable_tqdm": True,
        "learning_rate": 1.0e-3,
        "max_steps": 3,
        "per_device_train_batch_size": 12,
        "num_generations": 3,
        "temperature": 0.6,
        "max_completion_length": 2,
        "beta": 0.0,
        "phase_every_steps": 2,
        "max_phases": 1,
        "min_hard_samples": 2,
        "hard_max_successes": 1,
        "dev_max_size": 8,
        "gepa_max_metric_calls": 40,
        "gepa_num_threads": 2,
        "reflection": "teacher:openai/scripted",
        "reflection_api_base": teacher.url,
        "reflection_retries": 0,
    }
    path = tmp_path_factory.mktemp("recipe") / "faults.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(**extra: str) -> dict[str, str]:
    # LiteLLM would otherwise try to fetch its cost map from the network at import (seconds here).
    return {**os.environ, "OPENAI_API_KEY": "scripted", "LITELLM_LOCAL_MODEL_COST_MAP": "True", **extra}


def start(recipe: Path, out: Path, *flags: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "p2o.cli",
        "train",
        "--config",
        str(recipe),
        "--output_dir",
        str(out),
        *flags,
    ]
    log = open(f"{out}.log", "a")  # noqa: SIM115 (closed with the process)
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env or _env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def finish(proc: subprocess.Popen, out: Path) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return rc, Path(f"{out}.log").read_text()


def train(recipe: Path, out: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    return finish(start(recipe, out, *flags, env=env), out)


def wait_for(proc: subprocess.Popen, moment, what: str) -> None:
    """Return as soon as `moment()` holds (polled every 2 ms); fail if the run ends first."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while not moment():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no {what} within {RUN_TIMEOUT} s")
        time.sleep(0.002)


def kill_when(proc: subprocess.Popen, moment, what: str) -> None:
    """SIGKILL the run's whole process group (trainer, policy server) as soon as `moment()` holds."""
    wait_for(proc, moment, what)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def lines(path: Path) -> int:
    try:
        return path.read_text().count("\n")
    except OSError:
        return 0


def round_files(out: Path) -> dict[str, object]:
    """What each round decided: its hard samples, its templates' texts, its assignments, its record."""
    found: dict[str, object] = {}
    for rdir in sorted((out / "rounds").glob("round-*")):
        name = rdir.name
        if (rdir / "hard.jsonl").exists():
            found[f"{name}/hard"] = (rdir / "hard.jsonl").read_text()
        if (rdir / "evolve/templates.json").exists():
            found[f"{name}/templates"] = [
                t["text"] for t in json.loads((rdir / "evolve/templates.json").read_text())["templates"]
            ]
            found[f"{name}/assignments"] = json.loads((rdir / "evolve/assignments.json").read_text())
        if (rdir / "round.json").exists():
            r = json.loads((rdir / "round.json").read_text())
            found[f"{name}/round"] = {
                k: r.get(k) for k in ("status", "global_step", "n_templates", "n_assigned")
            }
    return found


def templated_rows(out: Path, step: int) -> list[dict]:
    rows = [json.loads(x) for x in (out / "rounds/round-002/samples.jsonl").read_text().splitlines()]
    return [r for r in rows if r["step"] == step and r["template_id"]]


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    rc, log = train(recipe, out)
    assert rc == 0, log
    rounds = round_files(out)
    assert rounds["round-001/round"]["status"] == "done" and rounds["round-001/round"]["n_assigned"] > 0, (
        rounds
    )
    assert templated_rows(out, 2), "step 3 of the uninterrupted run should generate from round 1's templates"
    return out


@pytest.mark.slow
def test_killed_mid_phase_mid_checkpoint_and_mid_step_resumes_to_the_uninterrupted_run(
    recipe, reference, tmp_path
):
    out = tmp_path / "run"
    evals = out / "rounds/round-001/evolve/gepa/evaluations.jsonl"
    ckpt2 = out / "checkpoint-2"

    # 1. Mid-phase: GEPA has stored evaluations of round 1; no checkpoint or round record yet.
    proc = start(recipe, out)
    kill_when(proc, lambda: lines(evals) >= 4, "evaluations stored by round 1's phase")
    assert not (out / "rounds/round-001/round.json").exists()
    assert not list(out.glob("checkpoint-2"))

    # 2. Resumed: the phase goes on from its stored evaluations. Its policy server is killed
    #    mid-phase (relaunched, the phase retried), then the run is killed while checkpoint-2, the
    #    one right after round 1, is being written.
    proc = start(recipe, out, "--resume")
    wait_for(proc, lambda: lines(evals) >= 12, "more evaluations of round 1's phase")
    servers = [pid for pid in _descendants(proc.pid) if b"serve" in _cmdline(pid)]
    assert servers, "the run should have a policy server by now"
    for pid in servers:
        os.kill(pid, signal.SIGKILL)
    kill_when(proc, lambda: ckpt2.is_dir() and not (ckpt2 / "trainer_state.json").exists(), "checkpoint-2")
    _, log = finish(proc, out)
    assert "checkpoint-1 (step 1); no round had run yet" in log  # the last one before the phase
    assert "phase attempt 1 failed, retrying" in log and "Traceback" not in log
    phase = json.loads((out / "rounds/round-001/evolve/phase.json").read_text())
    assert phase["resumed"] is True, "the phase should have resumed its stored evaluations"
    record = json.loads((out / "rounds/round-001/round.json").read_text())
    assert record["status"] == "done" and record["attempts"] == 2

    # 3. Resumed past the partial checkpoint, then killed in the middle of step 3 (rollouts logged,
    #    no optimizer step saved).
    proc = start(recipe, out, "--resume")
    step3 = out / "rounds/round-002/samples.jsonl"
    kill_when(proc, lambda: (ckpt2 / "trainer_state.json").exists() and step3.exists(), "step 3's rollouts")
    _, log = finish(proc, out)
    assert "skipped" in log and "checkpoint-2" in log and "moved to incomplete-checkpoint-2" in log
    assert "checkpoint-1 (step 1)" in log
    assert "round 1 finished in the interrupted run" in log  # read back, not rerun
    assert (out / "incomplete-checkpoint-2").is_dir() and not (out / "checkpoint-3").exists()

    # 4. Resumed from checkpoint-2 with round 1 restored; runs to the end.
    rc, log = train(recipe, out, "--resume")
    assert rc == 0, log
    assert "resuming from" in log and "checkpoint-2 (step 2); restored round 1 (done:" in log
    assert "Traceback" not in log
    assert round_files(out) == round_files(reference)
    used = templated_rows(out, 2)
    assert used and all(r["template_id"].startswith("r1:") for r in used)
    assert used == templated_rows(reference, 2)
    summary = json.loads((out / "train_summary.json").read_text())
    assert [r["status"] for r in summary["rounds"]] == ["done"] and summary["global_step"] == 3


@pytest.mark.slow
def test_a_policy_server_killed_mid_phase_is_relaunched_for_the_retry_and_later_rounds(recipe, tmp_path):
    out = tmp_path / "run"
    evals = out / "rounds/round-001/evolve/gepa/evaluations.jsonl"
    proc = start(
        recipe,
        out,
        "--max_steps",
        "4",
        "--max_phases",
        "2",
        "--phase_after_last_step",
        "true",
        "--save_strategy",
        "no",
    )
    wait_for(proc, lambda: lines(evals) >= 4, "evaluations stored by round 1's phase")
    servers = [pid for pid in _descendants(proc.pid) if b"serve" in _cmdline(pid)]
    assert servers, "the run should have a policy server by now"
    for pid in servers:
        os.kill(pid, signal.SIGKILL)
    rc, log = finish(proc, out)
    assert rc == 0, log
    assert "phase attempt 1 failed, retrying: PolicyServerError" in log and "Traceback" not in log
    rounds = json.loads((out / "train_summary.json").read_text())["rounds"]
    assert [(r["status"], r["attempts"]) for r in rounds] == [("done", 2), ("done", 1)]
    assert all(r["n_assigned"] > 0 for r in rounds)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(d.name))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def train_here(recipe: Path, out: Path, *flags: str) -> int:
    """`p2o train` in this process (what a subprocess would add here is only its start-up time)."""
    from p2o.train.cli import main

    return main(["--config", str(recipe), "--output_dir", str(out), *flags])


@pytest.fixture
def teacher_env(monkeypatch):
    for k, v in _env().items():
        if k not in os.environ or os.environ[k] != v:
            monkeypatch.setenv(k, v)


@pytest.mark.slow
def test_unknown_teacher_provider_stops_at_preflight(recipe, tmp_path, teacher_env, capfd):
    out = tmp_path / "run"
    assert train_here(recipe, out, "--reflection", "teacher:nosuchprovider/x") == 1
    log = capfd.readouterr().err
    assert "p2o train: stopped at step 0: preflight: ReflectionError" in log
    assert "nosuchprovider/x" in log and "LLM Provider NOT provided" in log  # LiteLLM's own words
    assert "Provider List" not in log and "Traceback" not in log
    assert not (out / "rounds").exists()


@pytest.mark.slow
def test_unreachable_teacher_stops_the_run(recipe, tmp_path, teacher_env, monkeypatch, capfd):
    # A closed port, given through LiteLLM's own variable.
    monkeypatch.setenv("OPENAI_API_BASE", "http://127.0.0.1:9/v1")
    cfg = yaml.safe_load(recipe.read_text())
    del cfg["reflection_api_base"]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(cfg))
    assert train_here(tmp_path / "recipe.yaml", tmp_path / "run", "--reflection", "teacher:openai/x") == 1
    log = capfd.readouterr().err
    assert "stopped at step 0: preflight" in log and "unreachable" in log and "Traceback" not in log


@pytest.mark.slow
def test_resume_on_a_missing_an_empty_and_a_finished_folder(recipe, reference, tmp_path, capfd):
    assert train_here(recipe, tmp_path / "missing", "--resume") == 2
    assert f"{tmp_path / 'missing'} does not exist: nothing to resume" in capfd.readouterr().err
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    assert train_here(recipe, tmp_path / "empty", "--resume") == 2
    assert "holds no checkpoint and no p2o run" in capfd.readouterr().err

    finished = tmp_path / "finished"
    shutil.copytree(reference, finished)
    before = {p.relative_to(finished): p.read_bytes() for p in finished.rglob("*") if p.is_file()}
    assert train_here(recipe, finished, "--resume") == 0
    log = capfd.readouterr().err
    assert "holds a finished run (3 steps" in log and "nothing to resume" in log
    after = {p.relative_to(finished): p.read_bytes() for p in finished.rglob("*") if p.is_file()}
    assert after == before  # train_seconds, held-out lines, rounds: untouched


# ---------------------------------------------------------------- the pieces, without a subprocess


def _checkpoint(folder: Path, trainer_state="{}", p2o_state="{}", weights=True) -> Path:
    folder.mkdir(parents=True)
    if trainer_state is not None:
        (folder / "trainer_state.json").write_text(trainer_state)
    if p2o_state is not None:
        (folder / "p2o_trainer_state.json").write_text(p2o_state)
    if weights:
        (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_the_newest_complete_checkpoint_is_the_resume_point(tmp_path):
    from p2o.train.resume import find_resume_point, set_aside

    good = _checkpoint(tmp_path / "checkpoint-8")
    _checkpoint(tmp_path / "checkpoint-10", p2o_state=None)  # killed before p2o's state was written
    _checkpoint(tmp_path / "checkpoint-12", trainer_state='{"global_st')  # cut short
    _checkpoint(tmp_path / "checkpoint-14", weights=False)
    _checkpoint(tmp_path / "checkpoint-16", trainer_state=None)  # killed while TRL wrote its files
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name: ignored
    point = find_resume_point(tmp_path)
    assert point.checkpoint == good
    why = {p.name: reason for p, reason in point.skipped}
    assert list(why) == ["checkpoint-16", "checkpoint-14", "checkpoint-12", "checkpoint-10"]
    assert "trainer_state.json is missing" in why["checkpoint-16"]
    assert "no model weights" in why["checkpoint-14"]
    assert "trainer_state.json is cut short" in why["checkpoint-12"]
    assert "p2o_trainer_state.json is missing" in why["checkpoint-10"]
    assert set_aside(tmp_path / "checkpoint-10").name == "incomplete-checkpoint-10"
    _checkpoint(tmp_path / "checkpoint-10", p2o_state=None)
    assert set_aside(tmp_path / "checkpoint-10").name == "incomplete-checkpoint-10-2"
    assert find_resume_point(tmp_path).checkpoint == good
    zero3 = _checkpoint(tmp_path / "checkpoint-20", weights=False)
    (zero3 / "global_step20").mkdir()  # DeepSpeed's sharded weights
    assert find_resume_point(tmp_path).checkpoint == zero3


def test_rows_a_resumed_run_writes_again_are_dropped(tmp_path):
    from p2o.train.resume import trim_jsonl

    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps({"step": s, "acc": s / 10}) + "\n" for s in (0, 4, 8, 12)))
    assert trim_jsonl(path, lambda row: row["step"] < 8) == 2
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 4]


def test_a_finished_round_is_read_back_only_when_complete(tmp_path):
    from p2o.train.resume import finished_round

    rdir = tmp_path / "round-001"
    (rdir / "evolve").mkdir(parents=True)
    (rdir / "round.json").write_text(
        json.dumps({"round": 1, "status": "done", "global_step": 32, "seconds": 4})
    )
    (rdir / "evolve/templates.json").write_text(
        json.dumps({"templates": [{"id": "seed", "text": ""}, {"id": "t1", "text": "think"}]})
    )
    (rdir / "evolve/phase.json").write_text(json.dumps({"status": "complete"}))
    assert finished_round(rdir, 32) is None  # assignments.json not written yet
    (rdir / "evolve/assignments.json").write_text(json.dumps({"s1": ["t1", "t1"]}))
    templates, assignments, stats, record = finished_round(rdir, 32)
    assert templates == {"seed": "", "t1": "think"} and assignments == {"s1": ["t1", "t1"]}
    assert stats["status"] == "complete" and record["seconds"] == 4
    assert finished_round(rdir, 16) is None  # another step: not this round


def test_a_resumed_epoch_is_shuffled_as_in_the_uninterrupted_run():
    from trl.trainer.utils import RepeatSampler

    from p2o.train.trainer import EpochSeededRepeatSampler

    trl_order = RepeatSampler(range(10), mini_repeat_count=2, batch_size=2, seed=3)
    uninterrupted = [list(trl_order) for _ in range(3)]  # TRL: one generator across epochs
    ours = EpochSeededRepeatSampler.like(RepeatSampler(range(10), mini_repeat_count=2, batch_size=2, seed=3))
    for epoch in range(3):
        ours.set_epoch(epoch)
        assert list(ours) == uninterrupted[epoch]
    resumed = EpochSeededRepeatSampler.like(
        RepeatSampler(range(10), mini_repeat_count=2, batch_size=2, seed=3)
    )
    resumed.set_epoch(2)
    assert list(resumed) == uninterrupted[2] != uninterrupted[0]
