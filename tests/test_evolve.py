"""A whole prompt-evolution phase through a real `transformers serve` on loopback and real GEPA.

The policy is the tiny random Qwen3 of conftest; its hard samples are unlocked by one template
(`first_word_world`). Reflection is scripted: a labelled callable that proposes that template.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import yaml

from p2o.config import P2OConfig
from p2o.evolve import PhaseError, run_phase
from p2o.policy import PolicyServer, PolicyServerError
from p2o.tasks import Sample

from .conftest import first_word_task


def make_config(out, **kw):
    base = dict(
        output_dir=str(out),
        program="toy",
        gepa_max_metric_calls=40,
        gepa_max_tokens=2,  # the world's answers are the first word of a 2-token greedy completion
        gepa_num_threads=4,
        num_generations=4,
        per_device_train_batch_size=4,
        seed=0,
    )
    base.update(kw)
    return P2OConfig(**base)


class ScriptedReflector:
    """Scripted reflection model: first a reply without a fenced block, then the unlocking template."""

    name = "scripted"

    def __init__(self, template, on_call=None):
        self.template = template
        self.prompts: list[str] = []
        self.on_call = on_call

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if self.on_call:
            self.on_call(len(self.prompts))
        if len(self.prompts) == 1:
            return "I would tell the assistant to think harder."  # rejected: no_fences
        return f"New instruction:\n```\n{self.template}\n```"


def read(out, name):
    return json.loads((out / name).read_text())


def test_phase_rescues_the_hard_samples(first_word_world, tiny_policy_server, tmp_path):
    world = first_word_world
    out = tmp_path / "phase"
    reflector = ScriptedReflector(world.template)
    result = run_phase(
        make_config(out), world.task, world.samples, tiny_policy_server, out, reflection_lm=reflector
    )

    stats = read(out, "phase.json")
    assert stats == result.stats and stats["status"] == "complete"
    assert stats["dev_solved_frac_before"] == 0.0  # by construction every sample is hard without a template
    assert stats["dev_solved_frac_after"] >= 0.9
    assert stats["best_single"]["dev_solved_frac"] >= 0.9
    assert stats["rejected"]["no_fences"] == 1 and stats["reflection_calls"] == len(reflector.prompts) >= 2
    assert (
        40 <= stats["metric_calls"] <= 40 + stats["dev_size"]
    )  # GEPA stops at the first check past the budget
    assert stats["dev_size"] + stats["train_size"] == len(world.samples) == stats["hard_samples"]
    assert stats["policy_requests"] == stats["policy_item_evals"] > 0
    assert stats["tokens"]["policy_completion"] > 0 and stats["seconds"] > 0
    # The reflection model saw GEPA's reflective examples with the verdict and the gold answer.
    assert "# Example 1" in reflector.prompts[0] and "The correct answer is" in reflector.prompts[0]

    templates = read(out, "templates.json")["templates"]
    seed, *children = templates
    assert seed["text"] == "" and seed["parent"] is None and seed["mean"] == 0.0
    winner = next(t for t in children if t["text"] == world.template)
    assert winner["parent"] == seed["id"] and winner["in_cover"]
    assert set(winner["dev_scores"]) == set(result.dev_ids)  # every accepted candidate: full dev evaluation
    assert result.templates[winner["id"]] == world.template

    assignments = read(out, "assignments.json")
    assert assignments == result.assignments
    assert set(assignments) == {s.sample_id for s in world.samples}
    assert all(len(v) == 4 and set(v) <= set(stats["cover"]) for v in assignments.values())
    assert seed["id"] not in stats["cover"]  # the empty template is never assigned
    assert (out / "gepa" / "gepa_state.bin").exists() and (out / "gepa" / "proposals.jsonl").exists()


def test_running_again_resumes_without_new_rollouts(first_word_world, tiny_policy_server, tmp_path):
    world = first_word_world
    out = tmp_path / "phase"
    first = run_phase(
        make_config(out), world.task, world.samples, tiny_policy_server, out,
        reflection_lm=ScriptedReflector(world.template), progress=False,
    )  # fmt: skip
    again = run_phase(
        make_config(out), world.task, world.samples, tiny_policy_server, out,
        reflection_lm=ScriptedReflector(world.template), progress=False,
    )  # fmt: skip
    assert again.stats["resumed"] and not first.stats["resumed"]
    # The seed re-scoring that GEPA does on resume is read back from evaluations.jsonl.
    assert again.stats["policy_requests"] == first.stats["policy_requests"]
    assert again.stats["metric_calls"] == first.stats["metric_calls"]
    assert again.templates == first.templates and again.assignments == first.assignments
    # A larger budget on the same directory continues where the first run stopped.
    more = run_phase(
        make_config(out, gepa_max_metric_calls=80), world.task, world.samples, tiny_policy_server, out,
        reflection_lm=ScriptedReflector(world.template), progress=False,
    )  # fmt: skip
    assert more.stats["metric_calls"] > first.stats["metric_calls"]
    assert more.stats["reflection_calls"] >= first.stats["reflection_calls"]
    assert more.stats["policy_item_evals"] + more.stats["reused_item_evals"] >= more.stats["metric_calls"]
    # Other hard samples in the same directory would mix two phases: refused.
    with pytest.raises(PhaseError, match="different set of hard samples"):
        run_phase(
            make_config(out), world.task, world.samples[:-1], tiny_policy_server, out, reflection_lm=str
        )


def test_a_server_dying_mid_phase_is_named_and_finished_work_kept(first_word_world, tiny_policy, tmp_path):
    world = first_word_world
    out = tmp_path / "phase"
    # Two samples no template solves keep GEPA reflecting after the unlocking template is accepted.
    samples = [
        *world.samples,
        Sample("never1", "what 9 + 9 ?", "never"),
        Sample("never2", "what 8 ?", "never"),
    ]
    server = PolicyServer(tiny_policy, log_dir=out, timeout=180).start()

    class Reflector(ScriptedReflector):
        def __call__(self, prompt):
            reply = super().__call__(prompt)
            if len(self.prompts) >= 3:  # the unlocking template was accepted; now the server dies
                if server.running:
                    os.killpg(server._proc.pid, signal.SIGKILL)
                    server._proc.wait()
                return reply.replace(self.template, self.template + " .")  # a new child to evaluate
            return reply

    try:
        with pytest.raises(PolicyServerError) as err:
            run_phase(
                make_config(out, gepa_max_metric_calls=400), world.task, samples, server, out,
                reflection_lm=Reflector(world.template), progress=False,
            )  # fmt: skip
    finally:
        server.stop()
    msg = str(err.value)
    assert server.base_url in msg and str(out / "policy_server.log") in msg
    stats = read(out, "phase.json")
    assert stats["status"] == "interrupted" and server.base_url in stats["error"]
    texts = [t["text"] for t in read(out, "templates.json")["templates"]]
    assert world.template in texts  # the candidate accepted before the crash is kept
    assert read(out, "assignments.json")


def test_p2o_evolve_command_end_to_end(first_word_world, tiny_policy, tmp_path, capsys):
    """`p2o evolve --config FILE`: launches its own server, mines nothing (hard-sample file given),
    reflects with the live policy itself (`self`), writes the three JSON files and the run dir."""
    from p2o.evolve.cli import main

    world = first_word_world
    hard = tmp_path / "hard.jsonl"
    hard.write_text("".join(json.dumps(s.__dict__) + "\n" for s in world.samples))
    cfg = tmp_path / "evolve.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(tiny_policy),
                "task": "tests.conftest:first_word_task",
                "hard_samples": str(hard),
                "program": "toy",
                "reflection": "self",
                "reflection_max_tokens": 24,
                "meta_prompt": "compact",
                "gepa_max_metric_calls": 30,
                "gepa_max_tokens": 2,
                "num_generations": 2,
                "per_device_train_batch_size": 2,
                "output_dir": str(tmp_path / "unused"),
            }
        )
    )
    out = tmp_path / "evolve-out"
    assert main(["--config", str(cfg), "--output-dir", str(out), "--gepa_num_threads", "2"]) == 0
    stats = read(out, "phase.json")
    assert stats["status"] == "complete" and stats["reflection"] == "self"
    assert stats["metric_calls"] >= 30 and stats["reflection_calls"] >= 1
    assert stats["policy"]["model"] == str(tiny_policy.resolve())
    # A random tiny model rarely writes a valid template; whatever it wrote was validated and counted.
    assert stats["proposals_valid"] + sum(stats["rejected"].values()) == stats["reflection_calls"]
    assert (out / "templates.json").exists() and (out / "assignments.json").exists()
    assert "starting transformers server" in (out / "policy_server.log").read_text()
    assert "dev solved" in capsys.readouterr().err


def test_task_factory_for_cli():
    assert first_word_task().verifier("7 x", "7").correct


def test_teacher_reflection_keeps_the_api_key_out_of_every_file(
    first_word_world, tiny_policy_server, tmp_path, monkeypatch
):
    """Teacher-Ref through LiteLLM (its mock response: no network); the key stays in the environment."""
    import litellm

    secret = "sk-test-p2o-do-not-write-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    reply = f"```\n{first_word_world.template}\n```"
    real = litellm.completion

    # The policy client goes through LiteLLM too: only the teacher's calls get the mock response.
    def teacher_mocked(*args, **kwargs):
        if kwargs.get("model") == "openai/gpt-4o-mini":
            kwargs["mock_response"] = reply
        return real(*args, **kwargs)

    monkeypatch.setattr(litellm, "completion", teacher_mocked)
    out = tmp_path / "phase"
    world = first_word_world
    result = run_phase(
        make_config(out, reflection="teacher:openai/gpt-4o-mini"), world.task, world.samples,
        tiny_policy_server, out, progress=False,
    )  # fmt: skip
    assert result.stats["reflection"] == "teacher:openai/gpt-4o-mini"
    assert result.stats["dev_solved_frac_after"] >= 0.9 and result.stats["tokens"]["reflection_prompt"] > 0
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_missing_teacher_key_is_refused_before_any_model_call(tmp_path, monkeypatch):
    from p2o.evolve import ReflectionError, make_reflector

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ReflectionError, match="needs OPENAI_API_KEY in the environment"):
        make_reflector("teacher:openai/gpt-4o-mini", temperature=1.0, max_tokens=64)


def test_initial_reflection_runs_the_frozen_checkpoint_on_its_own_server(
    tiny_policy, tiny_policy_server, tmp_path
):
    from p2o.evolve import make_reflector

    initial = make_reflector(
        "initial", temperature=0.0, max_tokens=4, initial_model=tiny_policy, log_dir=tmp_path
    )
    live = make_reflector("self", temperature=0.0, max_tokens=4, policy=tiny_policy_server)
    try:
        assert initial.server is not None and initial.server.port != tiny_policy_server.port
        a, b = initial("what 1 + 1 ?"), live("what 1 + 1 ?")
        assert a.text == b.text and a.completion_tokens > 0  # same weights, two servers
        assert (tmp_path / "initial_policy_server.log").exists()
    finally:
        initial.close()
        live.close()
    assert not initial.server.running and tiny_policy_server.running


def test_phase_stops_when_every_dev_sample_is_perfect(first_word_world, tiny_policy_server, tmp_path):
    """`gepa_patience`: GEPA ends once the unlocking template solves every dev sample, far inside a
    budget it would otherwise spend on proposals that cannot improve anything."""
    world = first_word_world
    out = tmp_path / "phase"
    cfg = make_config(out, gepa_max_metric_calls=400, gepa_patience=50)
    reflector = ScriptedReflector(world.template)
    stats = run_phase(cfg, world.task, world.samples, tiny_policy_server, out, reflection_lm=reflector).stats
    assert stats["status"] == "complete" and stats["dev_solved_frac_after"] == 1.0
    assert stats["stopped"] == "dev_perfect"
    assert stats["metric_calls"] <= 3 * stats["dev_size"] + 2 * cfg.gepa_reflection_minibatch_size


def test_patience_stops_gepa_when_the_dev_front_stops_rising():
    from types import SimpleNamespace as S

    from p2o.evolve.phase import Patience

    stop = Patience(2)
    assert not stop(S(pareto_front_valset={"a": 0.0, "b": 0.0}))  # the seed's front
    assert not stop(S(pareto_front_valset={"a": 0.0, "b": 0.0}))  # stale 1
    assert not stop(S(pareto_front_valset={"a": 0.5, "b": 0.0}))  # rose: stale 0
    assert not stop(S(pareto_front_valset={"a": 0.5, "b": 0.0}))
    assert stop(S(pareto_front_valset={"a": 0.5, "b": 0.0})) and stop.stopped == "patience"
    perfect = Patience(100)
    assert perfect(S(pareto_front_valset={"a": 1.0, "b": 1.0})) and perfect.stopped == "dev_perfect"
    assert not Patience(1)(S(pareto_front_valset={}))  # no front yet: nothing to judge


def test_phase_with_the_policy_in_process_rescues_the_same_samples(first_word_world, tiny_policy, tmp_path):
    """The same phase against a `LocalPolicy` (batched generation in this process): same rescue,
    one batched generation per GEPA evaluation instead of a request per rollout."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from p2o.policy import LocalPolicy

    world = first_word_world
    model = AutoModelForCausalLM.from_pretrained(str(tiny_policy))
    policy = LocalPolicy(model, AutoTokenizer.from_pretrained(str(tiny_policy)), name="tiny@step-0")
    calls = []
    generate = policy.generate
    policy.generate = lambda ids, **kw: calls.append(len(ids)) or generate(ids, **kw)
    out = tmp_path / "phase"
    result = run_phase(
        make_config(out),
        world.task,
        world.samples,
        policy,
        out,
        reflection_lm=ScriptedReflector(world.template),
    )
    stats = read(out, "phase.json")
    assert stats["status"] == "complete" and stats["policy"]["backend"] == "trainer"
    assert stats["dev_solved_frac_before"] == 0.0 and stats["dev_solved_frac_after"] >= 0.9
    assert world.template in result.templates.values()
    assert set(result.assignments) == {s.sample_id for s in world.samples}
    # One rollout per item (gepa_samples_per_item 1); each evaluation is one generation, the dev set's too.
    assert stats["policy_requests"] == stats["policy_item_evals"] == sum(calls)
    assert max(calls) == stats["dev_size"] and len(calls) < sum(calls) / 2
