"""`p2o eval` and `evaluate`: benchmark definitions, scoring, reports, the CLI, and real generation.

Generation runs on tiny Qwen3 policies built locally (tests/tiny_world.py, conftest.py); scoring uses
the real verifiers. The scripted generator below stands in for a model only where a test needs
completions chosen in advance (the math verifier's verdicts and the pass@k of known counts).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from p2o.evaluation import (
    PAPER_BENCHMARKS,
    Benchmark,
    BenchmarkError,
    Generation,
    ServerGenerator,
    TransformersGenerator,
    evaluate,
    list_benchmarks,
    load_benchmark,
    mean_pass_at_k,
)
from p2o.evaluation.cli import main as eval_main
from p2o.evaluation.runner import model_labels

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
REPO = Path(__file__).resolve().parents[1]


class ScriptedGenerator:
    """Returns completions chosen in advance: `script[problem]` is the list of n completions."""

    def __init__(self, script: dict[str, list[str]], label: str = "scripted"):
        self.script = script
        self.label = label
        self.calls: list[dict] = []

    def generate(
        self, prompts, *, n, temperature, top_p, max_tokens, seed, chat_template_kwargs, progress=None
    ):
        self.calls.append(
            {"prompts": prompts, "n": n, "temperature": temperature, "kwargs": chat_template_kwargs}
        )
        out = []
        for messages in prompts:
            problem = messages[-1]["content"].split("Question: ", 1)[-1]
            out.append([Generation(t, "stop", len(t.split())) for t in self.script[problem][:n]])
        if progress:
            progress(len(prompts) * n)
        return out

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- benchmark definitions


def test_every_benchmark_in_evals_loads_and_the_paper_six_follow_the_paper():
    names = list_benchmarks()
    assert {*PAPER_BENCHMARKS, "toy", "toy_hard", "toy_easy"} <= set(names)
    for name in names:
        b = load_benchmark(name)
        assert b.name == name
    for name in ("aime24", "aime25", "amc23"):  # small benchmarks: avg@16 at T=0.6
        b = load_benchmark(name)
        assert (b.n, b.temperature, b.task) == (16, 0.6, "math")
        assert b.task_kwargs["chat_template_kwargs"] == {"enable_thinking": False}
    for name in ("math500", "minerva", "olympiadbench"):  # large ones: greedy
        b = load_benchmark(name)
        assert (b.n, b.temperature) == (1, 0.0)
    assert load_benchmark("olympiadbench").answer_is_list
    for name, split in (("toy", "test"), ("toy_hard", "test_hard"), ("toy_easy", "test_easy")):
        b = load_benchmark(name)
        assert (b.task, b.split, b.temperature, b.dataset) == ("toy", split, 0.0, None)


def test_bad_benchmark_files_are_named(tmp_path):
    with pytest.raises(BenchmarkError, match=r"unknown benchmark 'nope'.*aime24"):
        load_benchmark("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntemprature: 0.6\n")
    with pytest.raises(BenchmarkError, match=r"bad\.yaml: unknown field\(s\) temprature"):
        load_benchmark(bad)
    bad.write_text("name: bad\nn: 0\n")
    with pytest.raises(BenchmarkError, match="'n' must be an integer >= 1"):
        load_benchmark(bad)


def test_local_files_win_over_the_hub_and_data_dir_wins_over_local(tmp_path):
    b = load_benchmark(FIXTURES / "mini_math.yaml")
    assert b.data_source() == str(FIXTURES / "mini_math.jsonl")  # 'local', beside the YAML
    samples, source = b.load_samples()
    assert [s.sample_id for s in samples] == [f"m{i}" for i in range(6)]
    assert samples[1].answer == "\\frac{5}{6}"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "mini_math.jsonl").write_text(
        json.dumps({"id": "x", "question": "1+1?", "answer": "2"}) + "\n"
    )
    samples, source = b.load_samples(data_dir=data_dir)
    assert source == str(data_dir / "mini_math.jsonl") and [s.answer for s in samples] == ["2"]
    # Without a local copy the hub id is used; an unreadable one fails with the offline recipe.
    gone = Benchmark(name="gone", dataset=str(tmp_path / "missing.jsonl"))
    with pytest.raises(BenchmarkError, match=r"benchmark 'gone'.*missing\.jsonl does not exist"):
        gone.load_samples()


def test_list_answers_are_joined_for_olympiadbench_style_data():
    b = Benchmark(
        name="oly",
        dataset=str(FIXTURES / "mini_olympiad.jsonl"),
        problem_field="question",
        answer_field="final_answer",
        answer_is_list=True,
    )
    samples, _ = b.load_samples()
    assert [s.answer for s in samples] == ["$2$, $-2$", "$55$", "23"]
    assert all(s.sample_id.startswith("oly-") for s in samples)


def test_model_labels_are_unique_and_readable():
    assert model_labels(["runs/p2o/final", "runs/grpo/final"]) == [
        ("p2o-final", "runs/p2o/final"),
        ("grpo-final", "runs/grpo/final"),
    ]
    assert model_labels(["base=Qwen/Qwen3-4B", "ckpt"]) == [("base", "Qwen/Qwen3-4B"), ("ckpt", "ckpt")]
    assert [lab for lab, _ in model_labels(["a/m", "a/m"])] == ["a-m", "a-m-2"]


# ---------------------------------------------------------------- scoring and reports


def test_math_scoring_pass_at_k_and_files_with_known_completions(tmp_path):
    b = load_benchmark(FIXTURES / "mini_math.yaml")
    samples, _ = b.load_samples()
    right = {s.problem: f"So the answer is $\\boxed{{{s.answer}}}$." for s in samples}
    # Problem i gets i correct completions out of 4 (capped), in different equivalent forms.
    script = {}
    for i, s in enumerate(samples):
        ok = min(i, 4)
        script[s.problem] = [right[s.problem]] * ok + ["I think it is \\boxed{1000}."] * (4 - ok)
    script[samples[1].problem][0] = "That gives $\\boxed{\\dfrac{10}{12}}$."  # equivalent to 5/6
    gen = ScriptedGenerator(script)
    report = evaluate(gen, [b], output_dir=tmp_path, progress=False)

    expected = [0, 1, 2, 3, 4, 4]
    r = report.result("scripted", "mini_math")
    assert r.ok and r.n == 4 and r.correct == expected
    assert r.avg == pytest.approx(sum(expected) / 24)
    assert r.pass_at_k == {f"pass@{k}": pytest.approx(mean_pass_at_k(expected, 4, k)) for k in (1, 2, 4)}
    assert gen.calls[0]["temperature"] == 0.6 and gen.calls[0]["n"] == 4

    rows = [json.loads(line) for line in (tmp_path / "scripted" / "mini_math.jsonl").read_text().splitlines()]
    assert [row["correct"] for row in rows] == expected
    assert rows[1]["scores"][0] == 1.0 and rows[1]["extracted"][0] == "\\dfrac{10}{12}"
    assert rows[0]["prompt"][-1]["content"].startswith("Let's think step by step")
    assert "The correct answer is 56" in rows[0]["feedback"][0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["complete"] and summary["errors"] == []
    assert summary["results"]["scripted"]["mini_math"]["avg"] == pytest.approx(r.avg)
    md = (tmp_path / "summary.md").read_text()
    assert "| scripted | 58.3 |" in md and "pass@4" in md


def test_greedy_means_one_completion_and_overrides_apply():
    b = load_benchmark(FIXTURES / "mini_math.yaml")
    samples, _ = b.load_samples()
    gen = ScriptedGenerator({s.problem: [f"\\boxed{{{s.answer}}}"] * 4 for s in samples})
    report = evaluate(gen, [b], temperature=0, n=8, limit=2, progress=False, chat_template_kwargs={"x": 1})
    r = report.result("scripted", "mini_math")
    assert (r.n, r.temperature, r.num_problems, r.avg) == (1, 0.0, 2, 1.0)
    assert gen.calls[0]["n"] == 1 and gen.calls[0]["kwargs"] == {"x": 1}
    assert report.accuracy() == 1.0


def test_a_benchmark_that_cannot_be_loaded_is_reported_and_the_others_run(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text(f"name: broken\ntask: math\ndataset: {tmp_path / 'nowhere.jsonl'}\n")
    b = load_benchmark(FIXTURES / "mini_math.yaml")
    samples, _ = b.load_samples()
    gen = ScriptedGenerator({s.problem: [f"\\boxed{{{s.answer}}}"] * 4 for s in samples})
    report = evaluate(gen, [str(broken), b, "no_such_benchmark"], output_dir=tmp_path / "out", progress=False)
    assert report.result("scripted", "mini_math").avg == 1.0
    assert "nowhere.jsonl does not exist" in report.result("scripted", "broken").error
    assert "unknown benchmark 'no_such_benchmark'" in report.result("scripted", "no_such_benchmark").error
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["errors"]) == 2 and summary["results"]["scripted"]["mini_math"]["avg"] == 1.0
    assert "## Errors" in (tmp_path / "out" / "summary.md").read_text()


def test_paper_average_needs_all_six():
    gen = ScriptedGenerator({})
    report = evaluate(gen, [Benchmark(name="aime24", dataset="/nonexistent.jsonl")], progress=False)
    assert report.average("scripted") == {"paper_avg": None, "mean": None, "benchmarks": 0}


# ---------------------------------------------------------------- real generation


def _tiny_bench(tmp_path: Path, n: int, temperature: float) -> Path:
    """A benchmark YAML over problems written here, scored by the tiny world's first-word verifier."""
    data = tmp_path / "tiny_problems.jsonl"
    with data.open("w") as f:
        for i in range(6):
            f.write(json.dumps({"problem": f"what is {i} + {i}", "answer": str((2 * i) % 10)}) + "\n")
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "task": "tests.tiny_world:tiny_task",
                "local": str(data),
                "n": n,
                "temperature": temperature,
                "max_tokens": 4,
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tests.tiny_world import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("eval") / "tiny-model")


def test_evaluate_and_the_cli_agree_on_a_real_model(tmp_path, tiny_model, capsys):
    bench = _tiny_bench(tmp_path, n=4, temperature=1.0)
    report = evaluate(str(tiny_model), [str(bench)], seed=3, output_dir=tmp_path / "fn", progress=False)
    common = ["--no-progress", "--backend", "transformers", "--seed", "3"]
    rc = eval_main(
        ["--model", str(tiny_model), "--benchmarks", str(bench), "--output", str(tmp_path / "cli"), *common]
    )
    assert rc == 0
    fn = (tmp_path / "fn" / "tiny-model" / "tiny.jsonl").read_text()
    cli = (tmp_path / "cli" / "tiny-model" / "tiny.jsonl").read_text()
    assert fn == cli  # same seed: the same completions, verdicts and counts
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    r = summary["results"]["tiny-model"]["tiny"]
    assert (
        r["avg"] == report.accuracy()
        and r["n"] == 4
        and set(r["pass_at_k"]) == {"pass@1", "pass@2", "pass@4"}
    )
    assert r["mean_completion_tokens"] > 0
    assert "tiny-model" in capsys.readouterr().out


def test_two_models_get_a_bar_chart(tmp_path, tiny_model):
    from tests.tiny_world import build_tiny_model

    other = build_tiny_model(tmp_path / "other")
    bench = _tiny_bench(tmp_path, n=1, temperature=0.0)
    report = evaluate(
        [str(tiny_model), str(other)], [str(bench)], output_dir=tmp_path / "out", progress=False
    )
    assert report.models == ["tiny-model", "other"]
    png = tmp_path / "out" / "accuracy.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_a_model_that_cannot_be_loaded_is_reported(tmp_path):
    bench = _tiny_bench(tmp_path, n=1, temperature=0.0)
    report = evaluate(str(tmp_path / "no-model"), [str(bench)], backend="transformers", progress=False)
    assert "model could not be loaded" in report.result("no-model", "tiny").error


def test_cli_rejects_bad_arguments_with_named_flags(tmp_path, capsys):
    assert eval_main(["--model", "m"]) == 2
    assert "--benchmarks is required" in capsys.readouterr().err
    assert eval_main(["--model", "m", "--benchmarks", "aime24", "--template", str(tmp_path / "t.txt")]) == 2
    assert "--template" in capsys.readouterr().err
    assert eval_main(["--model", "m", "--benchmarks", "aime24", "--n", "0"]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err
    assert eval_main(["--list"]) == 0
    assert "olympiadbench" in capsys.readouterr().out


def test_the_cli_reports_a_failed_benchmark_and_exits_1(tmp_path, tiny_model, capsys):
    bench = _tiny_bench(tmp_path, n=1, temperature=0.0)
    args = [
        "--model",
        str(tiny_model),
        "--benchmarks",
        f"{bench},missing_bench",
        "--output",
        str(tmp_path / "o"),
    ]
    rc = eval_main([*args, "--no-progress", "--backend", "transformers"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "FAILED tiny-model / missing_bench: unknown benchmark" in err
    assert (
        json.loads((tmp_path / "o" / "summary.json").read_text())["results"]["tiny-model"]["tiny"]["avg"]
        is not None
    )


def test_template_measures_a_prompt_without_training(
    first_word_world, tiny_policy, tiny_policy_server, tmp_path
):
    """The gold answers are what the policy says under the unlocking template (via the server), so
    T(x, z) must score 100% and x alone 0%, in-process and through the server alike."""
    world = first_word_world
    task = dataclasses.replace(world.task, splits=lambda split: world.samples)
    bench = Benchmark(name="first_word", task=task, split="test", n=1, temperature=0.0, max_tokens=2)
    template = tmp_path / "template.txt"
    template.write_text(world.template + "\n")

    gen = TransformersGenerator.from_pretrained(tiny_policy, label="tiny")
    plain = evaluate(gen, [bench], progress=False)
    templated = evaluate(gen, [bench], template=template.read_text(), output_dir=tmp_path, progress=False)
    assert plain.accuracy() == 0.0
    assert templated.accuracy() == 1.0
    row = json.loads((tmp_path / "tiny" / "first_word.jsonl").read_text().splitlines()[0])
    assert row["prompt"][-1]["content"] == f"{world.template}\n\n{world.samples[0].problem}"

    server = ServerGenerator(
        tiny_policy_server.url, tiny_policy_server.model_name, label="served", kind="transformers"
    )
    served = evaluate(server, [bench], template=world.template, progress=False)
    assert served.accuracy() == 1.0
    assert evaluate(server, [bench], progress=False).accuracy() == 0.0


def test_template_from_a_phase_templates_json(tmp_path, capsys):
    from p2o.evaluation.cli import read_template

    phase = tmp_path / "templates.json"
    phase.write_text(
        json.dumps(
            {
                "component": "instructions",
                "templates": [
                    {"id": "0", "text": "", "dev_solved": 0, "mean": 0.0},
                    {"id": "1", "text": "Think in steps.", "dev_solved": 3, "mean": 0.2},
                    {"id": "2", "text": "Check each digit.", "dev_solved": 3, "mean": 0.4},
                ],
            }
        )
    )
    assert read_template(phase) == "Check each digit."  # most dev samples solved, then the higher mean
    assert read_template(phase, "1") == "Think in steps."
    with pytest.raises(ValueError, match="--template-id 9: not in"):
        read_template(phase, "9")
    with pytest.raises(ValueError, match="the template is empty"):
        read_template(phase, "0")
    text = tmp_path / "z.txt"
    text.write_text("Be careful.\n")
    assert read_template(text) == "Be careful.\n"
    with pytest.raises(ValueError, match="--template-id needs"):
        read_template(text, "1")


def test_task_kwargs_reach_every_benchmark(tmp_path, monkeypatch):
    import tests.test_eval as this
    from tests.tiny_world import tiny_samples, tiny_task

    seen: list[dict] = []

    def factory(**kwargs):
        seen.append(kwargs)
        return dataclasses.replace(tiny_task(), splits=lambda split: tiny_samples(2))

    monkeypatch.setattr(this, "task_factory", factory, raising=False)
    bench = tmp_path / "kw.yaml"
    bench.write_text("name: kw\ntask: tests.test_eval:task_factory\ntask_kwargs: {a: 1}\nsplit: test\n")
    gen = ScriptedGenerator({"what is 0 + 0": ["0"], "what is 1 + 1": ["3"]})  # one right, one wrong
    report = evaluate(gen, [str(bench)], task_kwargs={"b": 2}, progress=False)
    assert seen[-1] == {"a": 1, "b": 2}
    assert report.accuracy() == 0.5
    assert report.settings["task_kwargs"] == {"b": 2}
