"""A command's worker processes end with it: `p2o toy build` (attempts side by side) and `p2o demo
--jobs 2` (methods side by side), stopped by SIGTERM or killed by SIGKILL, leave nothing training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.procs import launched, outliving, signal_all

ROOT = Path(__file__).resolve().parents[1]


def start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    tag = uuid.uuid4().hex
    env = {
        **os.environ,
        "P2O_TEST_LAUNCH": tag,
        "P2O_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
    }
    log = open(tmp_path / f"{tag}.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen([sys.executable, "-m", "p2o.cli", *args], env=env, stdout=log, stderr=log)
    return proc, tag


def stop_when_working(tmp_path: Path, proc: subprocess.Popen, tag: str, workers: int, sig: int) -> str:
    """Wait until `workers` worker processes run beside the parent, send `sig` to the parent, and
    return what the command printed."""
    deadline = time.monotonic() + 120
    try:
        while True:
            children = {p: n for p, n in launched(tag).items() if p != proc.pid}
            spawned = [p for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
            if len(spawned) >= workers:
                break
            assert proc.poll() is None, (tmp_path / f"{tag}.log").read_text()
            assert time.monotonic() < deadline, f"no {workers} workers after 120 s: {children}"
            time.sleep(0.2)
        time.sleep(1.0)  # inside their work, not starting up
        proc.send_signal(sig)
        proc.wait(timeout=60)
        left = outliving(tag, 20)
        assert not left, f"still running 20 s after the parent got signal {sig}: {left}"
    finally:
        signal_all(launched(tag), signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return (tmp_path / f"{tag}.log").read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_build_leaves_no_attempt_training(tmp_path, sig):
    out = tmp_path / "build"
    proc, tag = start(
        tmp_path,
        "toy", "build", "--preset", "tiny", "--steps", "1000000", "--restarts", "1",
        "--attempts_at_once", "2", "--threads", "2", "--no-cache", "--quiet", "--output_dir", str(out),
    )  # fmt: skip
    stop_when_working(tmp_path, proc, tag, 2, sig)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143  # SIGTERM ends it as Ctrl-C would: its cleanup ran
    assert not out.exists() or not any(out.iterdir())  # no half-made build


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_demo_leaves_no_method_training(tmp_path, sig):
    from p2o.toy import ensure_toy_model

    model = ensure_toy_model(seed=0, output=tmp_path / "toy", preset="tiny", progress=False)
    proc, tag = start(
        tmp_path,
        "demo", "--methods", "grpo,grpo_2k", "--jobs", "2", "--max_steps", "100000", "--model", str(model),
        "--output_dir", str(tmp_path / "demo"),
    )  # fmt: skip
    stop_when_working(tmp_path, proc, tag, 2, sig)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143
