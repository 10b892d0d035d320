"""DSPy-native templates: candidates run as DSPy calls, evolved programs load and run anywhere.

- a GEPA candidate is a DSPy call whose HTTP body carries exactly the trainer's x̃ = T(x, z), the
  task's chat-template kwargs and the sampling settings, and nothing is cached (a fake
  OpenAI-compatible server records every request);
- one policy client: retries on 429/5xx, server down vs bad request;
- ordinary DSPy modules: ChainOfThought, demos, several input fields; several predictors refused;
- a phase saves its best and cover templates as DSPy program files; `p2o export` writes one; a fresh
  process loads it and runs it with a `dspy.LM` on the real tiny policy server;
- `p2o eval` of a template against a server runs the program as DSPy calls (the same bytes, sampling
  settings, finish reasons and token counts from DSPy's LM history); in process it generates from
  the same adapter's rendering.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import dspy
import pytest

from p2o.config import P2OConfig
from p2o.evolve.adapter import PolicyTemplateAdapter
from p2o.policy import PolicyClient, PolicyRequestError, PolicyServerError, free_port
from p2o.tasks import Sample, Task, Verdict
from p2o.templates import (
    ProgramError,
    TemplateAdapter,
    load_evolved,
    load_meta_prompt,
    load_program,
    render_augmented,
)

ROOT = Path(__file__).resolve().parents[1]


def build_messages(problem: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a careful solver."},
        {"role": "user", "content": f"Problem: {problem}"},
    ]


def exact_verifier(completion: str, reference: str) -> Verdict:
    ok = completion.strip() == reference
    return Verdict(float(ok), "correct" if ok else f"wrong, expected {reference}", completion.strip())


class FakePolicyServer:
    """An OpenAI-compatible /v1/chat/completions that records each body and answers 'answer <n>'
    (n counts requests), or with the next status in `fail` first."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.fail: list[int] = []
        self.finish_reason = "stop"
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # /health
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    status = outer.fail.pop(0) if outer.fail else 200
                    outer.bodies.append(body)
                    n = len(outer.bodies)
                if status != 200:
                    payload = {"error": {"message": f"status {status}", "type": "x", "code": status}}
                else:
                    payload = {
                        "id": f"c{n}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": f"answer {n}"},
                                "finish_reason": outer.finish_reason,
                            }
                        ],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                    }
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def fake_server():
    server = FakePolicyServer()
    yield server
    server.close()


def make_adapter(client, program="math_cot", **kw):
    task = Task(name="t", build_messages=build_messages, verifier=exact_verifier)
    return PolicyTemplateAdapter(
        program=load_program(program),
        task=task,
        client=client,
        reflector=lambda prompt: "",
        meta_prompt=load_meta_prompt("default"),
        num_threads=2,
        **kw,
    )


def test_a_candidate_is_a_dspy_call_that_sends_the_trainers_bytes(fake_server):
    client = PolicyClient(
        fake_server.url, "policy", backend="transformers", chat_template_kwargs={"enable_thinking": False}
    )
    adapter = make_adapter(client, samples_per_item=2, temperature=0.6, max_tokens=7)
    samples = [Sample("a", "2 + 2", "4"), Sample("b", "3 * 3", "9")]
    template = "Compute carefully."
    results = adapter.rollout(template, samples)
    adapter.close()

    assert len(fake_server.bodies) == 4
    for body in fake_server.bodies:
        problem = "2 + 2" if "2 + 2" in body["messages"][-1]["content"] else "3 * 3"
        # The trainer generates from render_augmented(x, z): the same JSON, byte for byte.
        trainer = render_augmented(build_messages(problem), template)
        assert json.dumps(body["messages"]) == json.dumps(trainer)
        assert body["chat_template_kwargs"] == {"enable_thinking": False}
        assert json.loads(body["generation_config"]) == {"do_sample": True, "temperature": 0.6}
        assert (body["temperature"], body["max_tokens"], body["model"]) == (0.6, 7, "policy")
    assert sorted(c for r in results for c in r.completions) == [f"answer {n}" for n in range(1, 5)]
    # DSPy saw the calls: its history holds the rendered messages, the client counted the tokens.
    from dspy.clients.base_lm import GLOBAL_HISTORY

    assert GLOBAL_HISTORY[-1]["messages"] in [
        render_augmented(build_messages(s.problem), template) for s in samples
    ]
    assert client.usage.as_dict()["prompt_tokens"] == 12 and client.usage.requests == 4


def test_nothing_is_cached_across_calls_or_weight_changes(fake_server):
    """The same candidate on the same sample twice (as after a weight sync under the same served
    name): two requests, two answers."""
    template = "Compute carefully."
    sample = Sample("a", "2 + 2", "4")
    first = make_adapter(PolicyClient(fake_server.url, "policy"))
    one = first.rollout(template, [sample])[0].completions
    again = first.rollout(template, [sample])[0].completions
    first.close()
    # A new phase's client of the same model name (new weights behind it) asks the server again.
    second = make_adapter(PolicyClient(fake_server.url, "policy"))
    after = second.rollout(template, [sample])[0].completions
    second.close()
    assert (one, again, after) == (["answer 1"], ["answer 2"], ["answer 3"])
    assert len(fake_server.bodies) == 3
    assert second.client.lm.cache is False and second.client.lm_for(0.0, 7).cache is False


def test_one_client_retries_429_and_5xx_and_tells_server_down_from_bad_request(fake_server):
    client = PolicyClient(fake_server.url, "policy", retries=2)
    fake_server.fail = [429, 503]
    assert client.chat([{"role": "user", "content": "hi"}]).text == "answer 3"
    fake_server.fail = [400]
    with pytest.raises(PolicyRequestError, match="HTTP 400 for model 'policy'"):
        client.chat([{"role": "user", "content": "hi"}])
    # One rejected request scores its sample 0 with the reason; the phase goes on.
    fake_server.fail = [400]
    adapter = make_adapter(client)
    (result,) = adapter.rollout("T", [Sample("a", "2 + 2", "4")])
    adapter.close()
    assert result.score == 0.0 and "rejected the request" in result.feedback[0]
    down = PolicyClient(f"http://127.0.0.1:{free_port()}/v1", "m", retries=0)
    with pytest.raises(PolicyServerError, match="is unreachable"):
        down.chat([{"role": "user", "content": "hi"}])


class _RecordingLM(dspy.BaseLM):
    """Answers every call with a fixed text and records the messages it was sent."""

    def __init__(self, text="Reasoning first. So 4."):
        super().__init__(model="recording")
        self.text = text
        self.seen: list[list[dict[str, str]]] = []

    def forward(self, prompt=None, messages=None, **kwargs):
        self.seen.append(messages)
        msg = SimpleNamespace(content=self.text, tool_calls=None)
        choice = SimpleNamespace(message=msg, finish_reason="stop", index=0)
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        return SimpleNamespace(choices=[choice], usage=usage, model="recording")


def _program_file(tmp_path, name, body):
    path = tmp_path / f"{name}.py"
    path.write_text("import dspy\n\n" + textwrap.dedent(body))
    return str(path)


def test_chain_of_thought_fills_the_answer_with_the_whole_completion(tmp_path):
    prog = load_program(
        _program_file(
            tmp_path,
            "cot",
            """
            class P(dspy.Module):
                def __init__(self):
                    super().__init__()
                    self.think = dspy.ChainOfThought("problem -> answer")

                def forward(self, problem):
                    return self.think(problem=problem)

            program = P
            """,
        )
    )
    # ChainOfThought keeps DSPy's placeholder instruction of the original signature: no template.
    assert (prog.seed, prog.input_field, prog.output_field) == ("", "problem", "answer")
    lm = _RecordingLM()
    with dspy.context(lm=lm, adapter=TemplateAdapter(build_messages)):
        out = prog.with_template("Think in small steps.")(problem="2+2?")
    assert lm.seen[-1] == render_augmented(build_messages("2+2?"), "Think in small steps.")
    assert out.answer == "Reasoning first. So 4." and out.reasoning == ""


def test_demos_are_rendered_into_the_template_as_worked_examples(tmp_path):
    prog = _demos_program(tmp_path)
    z = prog.template("Add.")
    assert z == "Add.\n\nWorked examples:\n\nExample 1\nProblem: 1 + 1\nCompletion: 2"
    lm = _RecordingLM()
    with dspy.context(lm=lm, adapter=TemplateAdapter(build_messages)):
        prog.with_template("Add.")(problem="3 + 4")
    # What DSPy sends is what the trainer renders from z (templates.json's text).
    assert (
        lm.seen[-1]
        == render_augmented(build_messages("3 + 4"), z)
        == prog.render(build_messages, "3 + 4", "Add.")
    )


def test_several_input_fields_are_laid_out_in_the_user_message(tmp_path):
    prog = load_program(
        _program_file(
            tmp_path,
            "multi",
            '''
            class Sig(dspy.Signature):
                """Use the hint."""

                problem: str = dspy.InputField()
                hint: str = dspy.InputField()
                answer: str = dspy.OutputField()

            program = dspy.Predict(Sig)
            ''',
        )
    )
    assert prog.seed == "Use the hint." and prog.inputs("3 + 4") == {"problem": "3 + 4", "hint": ""}
    lm = _RecordingLM()
    with dspy.context(lm=lm, adapter=TemplateAdapter(build_messages)):
        prog.module(problem="3 + 4", hint="carry the one")
        prog.module(**prog.inputs("3 + 4"))
    assert lm.seen[0][-1]["content"] == "Use the hint.\n\nProblem: Problem: 3 + 4\n\nHint: carry the one"
    # A sample fills the first field only: the trainer's x̃, unchanged.
    assert lm.seen[1] == render_augmented(build_messages("3 + 4"), "Use the hint.")


def test_several_predictors_are_refused_with_the_reason(tmp_path):
    path = _program_file(
        tmp_path,
        "two",
        """
        class P(dspy.Module):
            def __init__(self):
                super().__init__()
                self.draft = dspy.Predict("q -> a")
                self.check = dspy.ChainOfThought("q, a -> verdict")

        program = P
        """,
    )
    with pytest.raises(ProgramError, match=r"has 2 predictors \(draft, check.predict\).*one prompt x̃"):
        load_program(path)


def test_phase_saves_programs_and_an_exported_one_runs_in_a_fresh_process(
    first_word_world, tiny_policy_server, tmp_path
):
    from p2o.evolve import run_phase
    from p2o.templates.export import main as export_main

    world = first_word_world
    out = tmp_path / "phase"
    config = P2OConfig(
        output_dir=str(out),
        program="toy",
        gepa_max_metric_calls=40,
        gepa_max_tokens=2,
        gepa_num_threads=4,
        num_generations=4,
        per_device_train_batch_size=4,
        seed=0,
    )
    result = run_phase(
        config,
        world.task,
        world.samples,
        tiny_policy_server,
        out,
        reflection_lm=lambda prompt: f"```\n{world.template}\n```",
        progress=False,
    )
    best = result.stats["best_single"]["id"]
    saved = sorted(p.name for p in (out / "programs").glob("*.json"))
    assert saved == sorted({"best.json", *(f"{tid}.json" for tid in result.cover)})
    assert result.templates[best] == world.template

    exported = tmp_path / "exported.json"
    assert export_main(["--run", str(out), "--output", str(exported)]) == 0
    state = json.loads(exported.read_text())
    assert state["solve"]["signature"]["instructions"] == world.template  # the program's own save
    assert state["metadata"]["p2o"]["template_id"] == best

    problem = world.samples[0].problem
    script = textwrap.dedent(
        f"""
        import json, dspy
        from p2o.templates import load_evolved
        evolved = load_evolved({str(exported)!r}, task="tests.conftest:first_word_task")
        lm = dspy.LM({"openai/" + tiny_policy_server.model_name!r}, api_base={tiny_policy_server.base_url!r},
                     api_key="none", cache=False, temperature=0.0, max_tokens=2)
        with dspy.context(lm=lm):
            prediction = evolved(problem={problem!r})
        print(json.dumps({{"completion": prediction.completion, "messages": lm.history[-1]["messages"]}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    trainer = render_augmented(world.task.build_messages(problem), result.templates[best])
    assert got["messages"] == trainer
    with tiny_policy_server.client() as client:
        assert got["completion"] == client.chat(trainer, max_tokens=2).text  # greedy: the same answer
    # In this process too, the evolved module is a plain DSPy program underneath.
    evolved = load_evolved(exported, task=world.task)
    assert evolved.template == world.template and dict(evolved.named_predictors())


def test_export_names_what_is_wrong(tmp_path, capsys):
    from p2o.templates.export import main as export_main

    assert export_main(["--run", str(tmp_path), "--output", str(tmp_path / "x.json")]) == 2
    assert "neither a phase folder" in capsys.readouterr().err
    with pytest.raises(ProgramError, match="not an evolved p2o program"):
        (tmp_path / "plain.json").write_text(json.dumps({"self": {}, "metadata": {}}))
        load_evolved(tmp_path / "plain.json")


def test_a_phase_with_demos_sends_what_the_trainer_renders_from_templates_json(fake_server, tmp_path):
    """templates.json's text is z (instruction + demos); every request of the phase is
    render_augmented(x, z) of the seed or of a proposal, byte for byte."""
    from p2o.evolve import run_phase

    path = _program_file(
        tmp_path,
        "demos",
        """
        class P(dspy.Module):
            def __init__(self):
                super().__init__()
                self.solve = dspy.Predict("problem -> completion")
                self.solve.demos = [dspy.Example(problem="1 + 1", completion="2")]

        program = P
        """,
    )
    program = load_program(path)
    task = Task(name="t", build_messages=build_messages, verifier=exact_verifier)
    samples = [Sample(f"s{i}", f"{i} + {i}", str(2 * i)) for i in range(6)]
    out = tmp_path / "phase"
    config = P2OConfig(
        output_dir=str(out),
        program=path,
        gepa_max_metric_calls=12,
        gepa_num_threads=2,
        num_generations=2,
        per_device_train_batch_size=2,
        seed=0,
    )
    result = run_phase(
        config,
        task,
        samples,
        (fake_server.url.removesuffix("/v1"), "policy"),
        out,
        reflection_lm=lambda prompt: "```\nAdd the two numbers.\n```",
        progress=False,
    )
    saved = json.loads((out / "templates.json").read_text())["templates"]
    assert saved[0]["text"] == program.template("") == result.templates[saved[0]["id"]]
    assert saved[0]["text"].startswith("Worked examples:") and saved[0]["instruction"] == ""
    zs = [program.template(""), program.template("Add the two numbers.")]
    allowed = [json.dumps(render_augmented(build_messages(s.problem), z)) for s in samples for z in zs]
    assert fake_server.bodies and all(json.dumps(b["messages"]) in allowed for b in fake_server.bodies)
    assert any("Add the two numbers." in b["messages"][-1]["content"] for b in fake_server.bodies)
    # A training run's round: any template of templates.json exports, in the cover or not.
    import shutil

    from p2o.templates.export import main as export_main

    shutil.copytree(out, tmp_path / "run" / "rounds" / "round-002")
    target = tmp_path / "seed.json"
    argv = ["--run", str(tmp_path / "run"), "--round", "2", "--template_id", saved[0]["id"]]
    assert export_main([*argv, "--output", str(target)]) == 0
    evolved = load_evolved(target, task=task)
    assert evolved.template == program.template("") and evolved.info["template_id"] == saved[0]["id"]
    assert export_main(["--run", str(tmp_path / "run"), "--round", "1", "--output", str(target)]) == 2


# ---------------------------------------------------------------- p2o eval of a template


def bench_task(**kwargs) -> Task:
    """The task of the eval tests' benchmark: two problems whose gold answer the fake server never
    gives, so every completion scores 0 and only the requests matter."""
    samples = [Sample("a", "2 + 2", "4"), Sample("b", "3 * 3", "9")]
    return Task(
        name="t",
        build_messages=build_messages,
        verifier=exact_verifier,
        splits=lambda split: samples,
        chat_template_kwargs={"enable_thinking": False},
    )


def _demos_program(tmp_path):
    return load_program(
        _program_file(
            tmp_path,
            "demos",
            """
            class P(dspy.Module):
                def __init__(self):
                    super().__init__()
                    self.solve = dspy.Predict("problem -> completion")
                    self.solve.demos = [dspy.Example(problem="1 + 1", completion="2")]

                def forward(self, problem):
                    return self.solve(problem=problem)

            program = P
            """,
        )
    )


class _RecordingGenerator:
    """An in-process backend: records the messages it is asked to generate from."""

    label = "in-process"

    def __init__(self):
        self.prompts: list = []

    def generate(
        self, prompts, *, n, temperature, top_p, max_tokens, seed, chat_template_kwargs, progress=None
    ):
        from p2o.evaluation import Generation

        self.prompts.extend(prompts)
        return [[Generation("x", "stop", 1)] * n for _ in prompts]

    def close(self):
        pass


def test_eval_of_a_template_on_a_server_is_a_dspy_call_of_the_program(fake_server, tmp_path):
    from dspy.clients.base_lm import GLOBAL_HISTORY

    from p2o.evaluation import Benchmark, ServerGenerator, evaluate

    bench = Benchmark(name="b", task=bench_task(), n=2, temperature=0.6, max_tokens=7)
    server = ServerGenerator(fake_server.url, "policy", label="served", kind="transformers", num_threads=2)
    fake_server.finish_reason = "length"
    before = len(GLOBAL_HISTORY)
    report = evaluate(server, [bench], template="Compute carefully.", output_dir=tmp_path, progress=False)

    assert len(fake_server.bodies) == 4  # 2 problems x n=2, one DSPy call each
    for body in fake_server.bodies:
        problem = "2 + 2" if "2 + 2" in body["messages"][-1]["content"] else "3 * 3"
        trainer = render_augmented(build_messages(problem), "Compute carefully.")
        assert json.dumps(body["messages"]) == json.dumps(trainer)
        assert body["chat_template_kwargs"] == {"enable_thinking": False}
        assert json.loads(body["generation_config"]) == {"do_sample": True, "temperature": 0.6}
        assert (body["temperature"], body["max_tokens"], body["model"]) == (0.6, 7, "policy")
    # DSPy recorded every call; finish reasons and token counts come from its history entries.
    assert len(GLOBAL_HISTORY) - before == 4
    result = report.results["served"]["b"]
    assert (result.truncated_frac, result.mean_completion_tokens) == (1.0, 2.0)
    rows = [json.loads(line) for line in (tmp_path / "served" / "b.jsonl").read_text().splitlines()]
    assert rows[0]["prompt"] == render_augmented(build_messages("2 + 2"), "Compute carefully.")
    assert rows[0]["finish_reasons"] == ["length", "length"]
    assert sorted(c for r in rows for c in r["completions"]) == [f"answer {k}" for k in range(1, 5)]
    # Nothing is cached: the same evaluation again asks the server again.
    evaluate(server, [bench], template="Compute carefully.", progress=False)
    assert len(fake_server.bodies) == 8
    server.close()


def test_eval_in_process_generates_from_the_bytes_the_dspy_call_sends(fake_server, tmp_path):
    """A program with demos, and a plain text template: the in-process backend is given exactly the
    messages the served evaluation's DSPy call sends (and the trainer renders from z)."""
    from p2o.evaluation import Benchmark, ServerGenerator, evaluate

    prog = _demos_program(tmp_path)
    bench = Benchmark(name="b", task=bench_task(), n=1, temperature=0.0, max_tokens=7)
    for program, template in ((prog, "Add."), (None, "Add.\n\nCheck the sum.")):
        fake_server.bodies.clear()
        local = _RecordingGenerator()
        evaluate(local, [bench], template=template, program=program, progress=False)
        server = ServerGenerator(fake_server.url, "policy", label="served", num_threads=1)
        evaluate(server, [bench], template=template, program=program, progress=False)
        server.close()
        z = prog.template(template) if program is not None else template
        sent = sorted(json.dumps(b["messages"]) for b in fake_server.bodies)
        trainer = [json.dumps(render_augmented(build_messages(p), z)) for p in ("2 + 2", "3 * 3")]
        assert [json.dumps(m) for m in local.prompts] == sent == trainer
        assert ("Worked examples:" in sent[0]) == (program is not None)


def test_p2o_eval_runs_an_evolved_program_file_as_dspy_calls(fake_server, tmp_path, capsys):
    from p2o.evaluation.cli import main as eval_main

    prog = _demos_program(tmp_path)
    evolved = prog.save_evolved(tmp_path / "best.json", "Add carefully.", template_id="3", task="t")
    yaml_path = tmp_path / "b.yaml"
    yaml_path.write_text("name: b\ntask: tests.test_dspy_programs:bench_task\nsplit: test\nmax_tokens: 5\n")
    args = ["--server", fake_server.url, "--model", "policy", "--benchmarks", str(yaml_path)]
    out = tmp_path / "eval"
    code = eval_main([*args, "--template", str(evolved), "--output", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    z = prog.template("Add carefully.")
    sent = sorted(json.dumps(b["messages"]) for b in fake_server.bodies)
    assert sent == [json.dumps(render_augmented(build_messages(p), z)) for p in ("2 + 2", "3 * 3")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["template"] == z
    # --program names the program a text template runs in (its demos kept); a program file names its own.
    text = tmp_path / "z.txt"
    text.write_text("Add carefully.\n")
    fake_server.bodies.clear()
    assert eval_main([*args, "--template", str(text), "--program", prog.source, "--output", str(out)]) == 0
    assert [b["messages"][-1]["content"].split("\n\nProblem:")[0] for b in fake_server.bodies] == [z, z]
    assert eval_main([*args, "--template", str(evolved), "--program", "math_cot", "--output", str(out)]) == 2
    assert "is a program file, which names its program" in capsys.readouterr().err
