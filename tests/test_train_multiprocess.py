"""Hard-sample gathering and assignment broadcast with two processes on CPU.

`accelerate launch --cpu --num_processes 2` starts several processes only through mpirun; without
MPI it runs one. Two CPU processes come from accelerate's torchrun launcher with CPU forced:
`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2` (gloo backend).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.procs import launched, outliving, signal_all
from tests.tiny_world import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]


LAUNCH_TIMEOUT = 300  # a run takes 20-40 s; pytest's own timeout (600 s) would lose every output


def launch_two(model: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "1",
        "PYTHONFAULTHANDLER": "1",
    }  # a crash prints every thread's stack
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(ROOT / "tests/mp_train_script.py"), str(model), str(out), *extra,
    ]  # fmt: skip
    # Every process of this launch carries a tag in its environment, so that a hang can be ended in
    # all of them at once; the output goes to files, which survive the kill.
    tag = uuid.uuid4().hex
    env["P2O_TEST_LAUNCH"] = tag
    logs = out.parent / f"{out.name}-launch"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "stdout").open("w") as so, (logs / "stderr").open("w") as se:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=so, stderr=se, text=True)
        try:
            proc.wait(timeout=LAUNCH_TIMEOUT)
            hung = False
        except subprocess.TimeoutExpired:
            hung = True
        # Hung, or exited with a rank (or anything a rank started) still alive: that process would
        # outlive a user's run the same way. SIGABRT: faulthandler (PYTHONFAULTHANDLER) prints
        # where every thread of every rank is.
        left = launched(tag) if hung else outliving(tag, grace=15)
        if left:
            signal_all(left, signal.SIGABRT)
            signal_all(outliving(tag, grace=30), signal.SIGKILL)
            proc.wait()
    if hung or left:
        stacks = (logs / "stderr").read_text()
        what = f"hung for {LAUNCH_TIMEOUT} s" if hung else f"left processes behind its launcher: {left}"
        pytest.fail(f"the two-process run {what}; each rank's threads:\n{stacks[-20000:]}")
    done = subprocess.CompletedProcess(
        cmd, proc.returncode, (logs / "stdout").read_text(), (logs / "stderr").read_text()
    )
    assert done.returncode == 0, done.stderr[-4000:]
    # Each rank freed its process group before exiting (its gloo threads stopped): a group alive at
    # interpreter shutdown can abort a finished process.
    assert [json.loads((out / f"released-{i}.json").read_text()) for i in range(2)] == [True, True]
    return done


@pytest.mark.slow
def test_a_phase_longer_than_the_collective_timeout_does_not_kill_the_waiting_rank(tmp_path):
    """Collectives time out after 4 s (ddp_timeout); each phase lasts 9 s. The waiting rank sits in
    1-second heartbeat collectives (phase_wait_poll_seconds), never in one as long as the phase."""
    model = build_tiny_model(tmp_path / "model")
    out = tmp_path / "run"
    launch_two(model, out, "9", "4")
    r0, r1 = (json.loads((out / f"rank-{i}.json").read_text()) for i in range(2))
    assert r0["world"] == 2 and r0["assignments"] and r0["assignments"] == r1["assignments"]
    assert len(r0["rounds"]) == 2  # both phases (steps 2 and 4) ran and reached both ranks


@pytest.mark.slow
def test_two_processes_agree_on_hard_samples_and_assignments(tmp_path):
    model = build_tiny_model(tmp_path / "model")
    out = tmp_path / "run"
    launch_two(model, out)
    r0, r1 = (json.loads((out / f"rank-{i}.json").read_text()) for i in range(2))
    assert r0["world"] == 2
    # Both ranks hold the same stats and assignments, built from the groups of *both* ranks.
    for key in ("tracker", "assignments", "templates", "rounds"):
        assert r0[key] == r1[key], key
    seen = sum(s["seen_groups"] for s in r0["tracker"]["stats"].values())
    assert seen == 4 * 3  # 4 steps x 3 groups of K=2 per global batch of 6
    assert r0["rounds"][0] > 0 and r0["assignments"]
    # Rollout k of a group uses template k, even when the group spans the two ranks.
    last0, last1 = r0["rollouts"][-1], r1["rollouts"][-1]
    rows = last0 + last1
    for k in range(0, len(rows), 2):
        (sa, ta), (sb, tb) = rows[k], rows[k + 1]
        assert sa == sb
        # the last generation ran after round 1 (ids "r1:a", "r1:b"): k-th rollout, k-th template
        assert [ta.split(":")[1], tb.split(":")[1]] == ["a", "b"]


@pytest.mark.slow
def test_two_processes_run_a_real_phase_with_the_training_model_in_process(tmp_path):
    """`policy_server: trainer` under DDP: the main process generates the phase's rollouts with its own
    model while the other rank waits; both ranks adopt the same templates."""
    model = build_tiny_model(tmp_path / "model")
    out = tmp_path / "run"
    launch_two(model, out, "in-process")
    r0, r1 = (json.loads((out / f"rank-{i}.json").read_text()) for i in range(2))
    assert r0["world"] == 2 and r0["templates"] == r1["templates"] and r0["assignments"] == r1["assignments"]
    phase = json.loads((out / "rounds/round-001/evolve/phase.json").read_text())
    assert phase["policy"]["backend"] == "trainer" and phase["metric_calls"] > 0
    assert not (out / "policy_server.log").exists()


def test_p2o_train_releases_the_process_group_on_every_way_out(tmp_path):
    """A gloo group left alive at exit can abort the process after its work is done (SIGABRT at
    interpreter shutdown): `p2o train` destroys it, here on its error path (a missing config)."""
    import torch.distributed as dist

    from p2o.train import cli
    from p2o.train.trainer import release_process_group

    release_process_group()  # nothing up: a no-op
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert cli.main(["--config", str(tmp_path / "missing.yaml")]) != 0
        assert not dist.is_initialized()
    finally:
        release_process_group()


def test_release_frees_the_group_or_says_what_still_holds_it(tmp_path, capsys):
    """Destroying a group does not stop gloo's threads while something references it (a DDP model, a
    trainer): release says so instead of letting the exit abort later."""
    import torch.distributed as dist

    from p2o.train.trainer import release_process_group

    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    before = threads()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 's1'}", rank=0, world_size=1)
    during = threads()
    assert during > before  # gloo's worker threads
    assert release_process_group() is True
    assert threads() < during and "still referenced" not in capsys.readouterr().err

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 's2'}", rank=0, world_size=1)
    held = dist.group.WORLD  # as a DDP-wrapped model holds it
    assert release_process_group() is False
    assert "still referenced" in capsys.readouterr().err and not dist.is_initialized()
    del held
