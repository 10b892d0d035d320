"""The real path of a GPU run, rehearsed on CPU: hub ids from an offline cache, a teacher behind
HTTP through LiteLLM, chat-template kwargs on every policy request, reflective examples that show
the whole output, the failure policy (configuration errors stop the run, passing ones retry), the
preflight, and `p2o rehearse` over every recipe of configs/paper/.

The teacher here is `ScriptedTeacher`: a scripted stand-in behind a real OpenAI-compatible HTTP
endpoint on loopback. The model named `Qwen/Qwen3-4B` is a tiny random stand-in in a local cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from p2o.config import ConfigError, P2OConfig
from p2o.evolve.adapter import cut_middle, fit_outputs
from p2o.evolve.reflection import LiteLLMReflector, ReflectionError, make_reflector
from p2o.rehearse.standins import ScriptedTeacher, write_cached_model
from p2o.tasks.data import to_dataset
from p2o.train.trainer import P2OTrainer, PhaseFatalError
from tests.tiny_world import build_tiny_model, tiny_samples, tiny_task

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "Qwen/Qwen3-4B"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("hf-cache")
    write_cached_model(HUB_ID, cache)
    return cache


@pytest.fixture
def offline_cache(hub_cache, monkeypatch):
    """This process resolves hub ids from `hub_cache` only (and its children inherit that)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


# ---------------------------------------------------------------- hub ids, offline


def test_a_hub_id_resolves_to_its_cached_snapshot_offline(offline_cache):
    from p2o.policy import CheckpointError, resolve_checkpoint

    path = Path(resolve_checkpoint(HUB_ID))
    assert path.is_dir() and (path / "config.json").exists() and offline_cache in path.parents
    with pytest.raises(CheckpointError, match=r"Qwen/NoSuchModel.*HF_HUB_OFFLINE=1"):
        resolve_checkpoint("Qwen/NoSuchModel")
    with pytest.raises(CheckpointError, match="not a directory"):
        resolve_checkpoint("/no/such/folder")


def test_initial_reflector_serves_a_hub_id_and_sends_chat_template_kwargs(offline_cache, tmp_path):
    """Self-Ref with the recipe's hub id; `enable_thinking: false` reaches the server: the stand-in's
    Qwen3-like template adds an empty think block (19 byte-level tokens) to the prompt."""
    kwargs = dict(temperature=0.0, max_tokens=4, initial_model=HUB_ID, log_dir=tmp_path)
    plain = make_reflector("initial", **kwargs)
    try:
        tokens_plain = plain.client.complete_text("Say OK.", temperature=0.0, max_tokens=2).prompt_tokens
    finally:
        plain.close()
    no_think = make_reflector("initial", chat_template_kwargs={"enable_thinking": False}, **kwargs)
    try:
        reply = no_think("Say OK.")
    finally:
        no_think.close()
    assert reply.prompt_tokens - tokens_plain == len("<think>\n\n</think>\n\n")


# ---------------------------------------------------------------- the teacher, over HTTP


def teacher_reflector(teacher: ScriptedTeacher, **kw) -> LiteLLMReflector:
    return LiteLLMReflector(
        "openai/teacher-model",
        temperature=0.6,
        max_tokens=64,
        api_base=teacher.api_base,
        retry_seconds=0.01,
        **kw,
    )


def test_teacher_through_litellm_answers_and_retries_passing_errors(monkeypatch):
    monkeypatch.setenv("REHEARSAL_TEACHER_KEY", "k-123")
    with ScriptedTeacher(key="k-123", fail_first=[429, 500, 503]) as teacher:
        reply = teacher_reflector(teacher, api_key_env="REHEARSAL_TEACHER_KEY")("Improve this template.")
        assert "```" in reply.text and reply.prompt_tokens > 0 and reply.completion_tokens > 0
        assert teacher.stats() == {"calls": 4, "answered": 1, "refused": 0}  # 3 retried, then answered


def test_teacher_that_refuses_the_key_is_a_fatal_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("REHEARSAL_TEACHER_KEY", "wrong")
    with ScriptedTeacher(key="right") as teacher:
        with pytest.raises(ReflectionError, match="REHEARSAL_TEACHER_KEY") as err:
            teacher_reflector(teacher, api_key_env="REHEARSAL_TEACHER_KEY").preflight()
        assert err.value.fatal and teacher.stats()["calls"] == 1  # no retry of a refused key
    monkeypatch.setenv("OPENAI_API_KEY", "wrong")
    with ScriptedTeacher(key="right") as teacher, pytest.raises(ReflectionError, match="OPENAI_API_KEY"):
        teacher_reflector(teacher).preflight()


def test_unset_key_variable_and_unreachable_endpoint_are_fatal(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    r = LiteLLMReflector("openai/m", temperature=0, max_tokens=8, api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(ReflectionError, match=r"NO_SUCH_KEY_VAR.*not set"):
        r.preflight()
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    closed = LiteLLMReflector(
        "openai/m",
        temperature=0,
        max_tokens=8,
        api_base="http://127.0.0.1:9/v1",
        retries=1,
        retry_seconds=0.01,
    )
    with pytest.raises(ReflectionError, match="unreachable") as err:
        closed.preflight()
    assert err.value.fatal


def test_keys_never_go_in_a_config():
    with pytest.raises(ConfigError, match="reflection_litellm_kwargs"):
        P2OConfig(output_dir="/tmp/x", reflection_litellm_kwargs={"api_key": "sk-secret"})
    with pytest.raises(ConfigError, match="reflection_api_key_env"):
        P2OConfig(output_dir="/tmp/x", reflection_api_key_env="sk-proj-abc123/def")


# ---------------------------------------------------------------- reflective examples


def test_outputs_are_cut_only_to_fit_and_the_cut_is_marked():
    assert fit_outputs([100, 5000, 300], 0) == [100, 5000, 300]
    cut = fit_outputs([100, 5000, 3000], 2500)
    assert cut[0] == 100 and sum(cut) <= 8100 - 2500 and cut[1] >= cut[2] - 1  # longest cut first
    text = "A" * 500 + "MIDDLE" + "Z" * 500
    short = cut_middle(text, 200)
    assert short.startswith("A" * 100) and short.endswith("Z" * 100) and "MIDDLE" not in short
    assert "cut here to fit the reflection model's context" in short


def test_reflective_examples_show_the_full_prompt_and_whole_output(tmp_path):
    from gepa.core.adapter import EvaluationBatch

    from p2o.evolve.adapter import ItemResult, PolicyTemplateAdapter
    from p2o.tasks import Sample, Task, Verdict
    from p2o.templates import load_meta_prompt, load_program

    task = Task(
        name="boxed",
        build_messages=lambda p: [{"role": "user", "content": p + " Put the answer in \\boxed{}."}],
        verifier=lambda c, r: Verdict(0.0, "wrong"),
    )

    def adapter(budget: int) -> PolicyTemplateAdapter:
        return PolicyTemplateAdapter(
            program=load_program("math_cot"),
            task=task,
            client=None,  # type: ignore[arg-type]  (no rollout in this test)
            reflector=lambda p: "",  # type: ignore[arg-type]
            meta_prompt=load_meta_prompt("default"),
            max_input_tokens=budget,
        )

    long_output = "step " * 4000 + "THE MIDDLE WHERE IT WENT WRONG " + "step " * 4000
    sample = Sample("s1", "What is 2+2?", "4")
    result = ItemResult("s1", 0.0, [long_output], [0.0], ["wrong"], [None])
    batch = EvaluationBatch(
        outputs=[long_output], scores=[0.0], trajectories=[{"sample": sample, "result": result}]
    )
    a = adapter(30000)
    name = a.component
    ds = a.make_reflective_dataset({name: ""}, batch, [name])
    rec = ds[name][0]
    assert "Put the answer in \\boxed{}." in rec["Inputs"]["problem"]  # the prompt x, not just the problem
    whole = a.fit_prompt("", list(ds[name]))
    assert "THE MIDDLE WHERE IT WENT WRONG" in whole and a.counters.outputs_cut == 0
    small = adapter(2000)
    cut = small.fit_prompt("", list(ds[name]))
    assert len(cut) <= 2000 * 3 and "cut here to fit" in cut and small.counters.outputs_cut == 1


# ---------------------------------------------------------------- failure policy and preflight


@dataclass
class Result:
    templates: dict
    assignments: dict
    stats: dict = field(default_factory=dict)


def trainer(tiny_model, tmp_path, phase_runner=None, **kw) -> P2OTrainer:
    task = tiny_task()
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=6,
        num_generations=3,
        max_completion_length=4,
        max_steps=4,
        phase_every_steps=2,
        phase_after_last_step=True,
        min_hard_samples=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    base.update(kw)
    return P2OTrainer(
        model=str(tiny_model),
        task=task,
        args=P2OConfig(**base),
        train_dataset=to_dataset(task, tiny_samples()),
        phase_runner=phase_runner,
    )


def test_a_configuration_error_in_a_phase_stops_the_run(tiny_model, tmp_path):
    from p2o.policy import CheckpointError

    def phase(**_):
        raise CheckpointError("checkpoint Qwen/Qwen3-4B is not a directory")

    tr = trainer(tiny_model, tmp_path, phase)
    with pytest.raises(PhaseFatalError, match=r"round 1 .*not a directory"):
        tr.train()
    assert tr.state.global_step == 2  # stopped at the first phase, not trained on as GRPO
    saved = json.loads((tmp_path / "out/rounds/round-001/round.json").read_text())
    assert saved["status"] == "failed" and saved["fatal"] and saved["attempts"] == 1


def test_a_passing_failure_is_retried_and_the_round_kept(tiny_model, tmp_path):
    calls = []

    def phase(hard_samples, **_):
        calls.append(1)
        if len(calls) == 1:
            raise TimeoutError("the teacher timed out")
        return Result({"t": "HINT"}, {s.sample_id: ["t"] for s in hard_samples})

    tr = trainer(tiny_model, tmp_path, phase, max_steps=2)
    tr.train()
    assert tr.rounds[0]["status"] == "done" and tr.rounds[0]["attempts"] == 2 and tr.assignments


def test_p2o_train_exits_1_and_names_failed_rounds(capsys):
    from p2o.train.cli import phase_totals, report_phases

    rounds = [
        {"round": 1, "global_step": 2, "status": "failed", "error": "TimeoutError: slow", "seconds": 1},
        {"round": 2, "global_step": 4, "status": "failed", "error": "TimeoutError: slow", "seconds": 1},
        {"round": 3, "global_step": 6, "status": "done", "seconds": 1, "cost": {"policy_tokens": 5}},
    ]
    cfg = P2OConfig(output_dir="/tmp/x")
    assert report_phases(phase_totals(rounds), cfg) == 1
    err = capsys.readouterr().err
    assert "round 1 (step 2) failed: TimeoutError" in err and "1 of 3 phases finished" in err
    assert report_phases(phase_totals(rounds[2:]), cfg) == 0
    skipped = [{"round": 1, "status": "skipped", "global_step": 2}]
    assert report_phases(phase_totals(skipped), cfg) == 0 and "no phase ran" in capsys.readouterr().err


def test_preflight_stops_a_run_whose_teacher_refuses_the_key_before_step_1(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("REHEARSAL_TEACHER_KEY", "wrong")
    with ScriptedTeacher(key="right") as teacher:
        tr = trainer(
            tiny_model,
            tmp_path,
            reflection="teacher:openai/teacher-model",
            reflection_api_base=teacher.api_base,
            reflection_api_key_env="REHEARSAL_TEACHER_KEY",
            policy_server_timeout=120,
        )
        with pytest.raises(PhaseFatalError, match=r"preflight.*REHEARSAL_TEACHER_KEY"):
            tr.train()
    assert tr.state.global_step == 0


def test_p2o_evolve_keeps_task_kwargs(tmp_path, capsys):
    from p2o.evolve.cli import main

    argv = [
        "--task", "math", "--task_kwargs", '{"chat_template_kwargs": {"enable_thinking": false}}',
        "--model_name_or_path", "Qwen/Qwen3-4B", "--reflection", "self", "--output_dir", str(tmp_path / "e"),
        "--dry_run",
    ]  # fmt: skip
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["chat_template_kwargs"] == {"enable_thinking": False}


# ---------------------------------------------------------------- the rehearsal


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the rehearsal's own limit is 1500 s; on a busy 2-core machine it passes 600 s
def test_rehearsal_of_every_paper_recipe(tmp_path):
    """`p2o rehearse`: all ten recipes, one under two processes, eval, kill -9 and resume, a refused
    key, and no key in any file a run wrote."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "OPENAI_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "p2o.cli", "rehearse", "--output", str(tmp_path / "r")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    report = json.loads((tmp_path / "r/rehearsal.json").read_text())
    assert proc.returncode == 0 and report["status"] == "done", (report.get("failed"), proc.stderr[-3000:])
    recipes = report["recipes"]
    assert len([n for n in recipes if "@" not in n]) == 10 and len(recipes) == 12
    for name, entry in recipes.items():
        assert entry["train"]["status"] == "done", name
        if "grpo" in name:
            assert entry["phases"] == [], name
        else:
            assert entry["phases"] and all(p["status"] == "done" for p in entry["phases"]), name
            assert sum(p["reflection_calls"] or 0 for p in entry["phases"]) > 0, name
        if "teacher" in name or "no_distill" in name:
            assert entry["teacher_answered"] > 0, name
    assert recipes["deepscaler_p2o_teacher@2proc"]["world_size"] == 2
    assert recipes["deepscaler_p2o_self@self"]["phases"][0]["status"] == "done"  # reflection: self
    checks = report["checks"]
    assert all(c["status"] == "done" for c in checks.values()), checks
    assert (
        "OPENAI_API_KEY" in checks["refused_key"]["message"] and checks["refused_key"]["steps_trained"] == 0
    )
