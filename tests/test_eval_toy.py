"""`p2o eval` end to end on the toy world: the CLI, `evaluate` and the toy world's own greedy decoding
give the same completions and the same held-out accuracy on the same problems; the vLLM backend
agrees where it can run."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("p2o.toy.task", reason="the toy world's task is not built yet")

from p2o.evaluation import evaluate, load_benchmark
from p2o.evaluation.cli import main as eval_main
from p2o.tasks import get_task

TOY_BENCHMARKS = ("toy", "toy_hard", "toy_easy")


def own_greedy(model_dir, split: str, max_tokens: int) -> list[str]:
    """The toy world's own measurement path (`p2o.toy.measure.generate`: its batching and padding) over
    the chat-rendered prompts: it shares no code with p2o.evaluation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from p2o.toy.measure import generate

    task = get_task("toy", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompts = [
        tokenizer.apply_chat_template(
            task.build_messages(s.problem), tokenize=False, add_generation_prompt=True
        )
        for s in task.splits(split)
    ]
    return tokenizer.batch_decode(generate(model, tokenizer, prompts, max_tokens), skip_special_tokens=True)


def check_agreement(model_dir, out, benchmarks=TOY_BENCHMARKS) -> dict[str, float]:
    args = ["--model", str(model_dir), "--benchmarks", ",".join(benchmarks), "--output", str(out)]
    assert eval_main([*args, "--no-progress", "--backend", "transformers"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    label = summary["models"][0]
    cli = {b: summary["results"][label][b]["avg"] for b in benchmarks}

    report = evaluate(str(model_dir), list(benchmarks), n=1, temperature=0, progress=False)
    assert {b: report.accuracy(label, b) for b in benchmarks} == cli

    task = get_task("toy", seed=0)
    for bench in benchmarks:
        b = load_benchmark(bench)
        rows = [json.loads(line) for line in (out / label / f"{bench}.jsonl").read_text().splitlines()]
        samples = task.splits(b.split)
        assert [r["sample_id"] for r in rows] == [s.sample_id for s in samples]
        own = own_greedy(model_dir, b.split, b.max_tokens)
        assert [r["completions"][0] for r in rows] == own
        own_acc = sum(task.verifier(c, s.answer).correct for c, s in zip(own, samples, strict=True)) / len(
            samples
        )
        assert own_acc == cli[bench]
    return cli


def test_toy_eval_agrees_with_the_worlds_own_decoding_on_a_tiny_build(tmp_path):
    from p2o.toy.build import build_toy_model, settings_from

    built = build_toy_model(
        tmp_path / "toy", seed=0, settings=settings_from("tiny"), progress=False, use_cache=False
    )
    check_agreement(built.path, tmp_path / "eval", benchmarks=("toy",))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_toy_eval_on_the_real_toy_policy(tmp_path):
    """The toy policy the demo trains from (built once, then cached): same numbers every way, and the
    world's design holds — easy operators solved without a prompt, hard ones not."""
    from p2o.toy.build import ensure_toy_model

    cli = check_agreement(ensure_toy_model(seed=0, progress=False), tmp_path / "eval")
    assert cli["toy_easy"] > 0.8 > 0.2 > cli["toy_hard"]
    print(json.dumps(cli))


@pytest.mark.vllm
@pytest.mark.gpu
def test_vllm_offline_engine_agrees_with_transformers_on_the_toy_world():
    pytest.importorskip("vllm", reason="vllm is not installed")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from p2o.toy.build import ensure_toy_model

    model = str(ensure_toy_model(seed=0, progress=False))
    hf = evaluate(model, ["toy"], temperature=0, backend="transformers", progress=False)
    vl = evaluate(model, ["toy"], temperature=0, backend="vllm", progress=False)
    label = hf.models[0]
    # Greedy decoding in two engines: the same up to rare floating-point ties.
    assert abs(hf.accuracy(label, "toy") - vl.accuracy(label, "toy")) <= 0.02
