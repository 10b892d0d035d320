"""The toy policy: tokenizer and chat template round trips, a reduced-size build, the cache, the CLI."""

import dataclasses
import json

import pytest

from p2o.templates import render_augmented
from p2o.toy import world as W
from p2o.toy.build import build_toy_model, default_cache_dir, ensure_toy_model, is_built, settings_from
from p2o.toy.measure import prompt_text
from p2o.toy.model import build_tokenizer, render_chat


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("P2O_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    import os

    os.environ.setdefault("P2O_CACHE", str(tmp_path_factory.mktemp("cache")))
    out = tmp_path_factory.mktemp("toy") / "model"
    return build_toy_model(out, seed=1, settings=settings_from("tiny"), progress=False, use_cache=False)


def test_tokenizer_round_trips_the_templated_prompt():
    tok = build_tokenizer()
    x = [{"role": "user", "content": "347 ⊕ 219"}]
    xt = render_augmented(
        x, "Work through the two numbers digit by digit, from left to right. Copy the first number."
    )
    for msgs in (x, xt):
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        assert text == render_chat(msgs)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    assert "\n\n" in tok.convert_ids_to_tokens(tok(render_chat(xt), add_special_tokens=False)["input_ids"])
    answer = tok("556<|im_end|>", add_special_tokens=False)["input_ids"]
    assert answer[-1] == tok.eos_token_id and tok.decode(answer, skip_special_tokens=True) == "556"
    every = [s for sents in W.list_instructions().values() for s in sents]
    assert all(tok.unk_token_id not in tok(s, add_special_tokens=False)["input_ids"] for s in every)


def test_reduced_build_loads_with_auto_classes_and_generates(tiny_build):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_build.path
    report = json.loads((path / "report.json").read_text())
    for key in (
        "instructed_acc",
        "easy_acc",
        "hard_acc",
        "params",
        "build_seconds",
        "hard_group_success_frac",
    ):
        assert key in report
    assert report["crm_ratio_below_0.01"] >= 0 and report["world"]["hard"]
    hard = report["world"]["hard"]
    assert sorted(report["hard_acc_by_operator"]) == sorted(f"{op} {rule}" for op, rule in hard.items())
    assert report["eval"]["problems_per_hard_operator"] == 16
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "Qwen3ForCausalLM" and tok.is_fast
    assert tok.pad_token is not None and tok.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tok.eos_token_id
    text = tok.apply_chat_template(
        [{"role": "user", "content": "347 ⊕ 219"}], add_generation_prompt=True, tokenize=False
    )
    assert text == prompt_text("347 ⊕ 219")
    enc = tok([text, prompt_text("12 ⊗ 34", "Copy the first number.")], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] <= enc["input_ids"].shape[1] + 5
    for name in ("world.json", "pretrain_log.jsonl", "build.json", "config.json", "tokenizer.json"):
        assert (path / name).is_file()


def test_second_build_with_same_seed_is_reused(tiny_build, tmp_path):
    again = build_toy_model(tiny_build.path, seed=1, settings=settings_from("tiny"), progress=False)
    assert again.reused and again.report == tiny_build.report
    assert not is_built(tiny_build.path, seed=2, settings=settings_from("tiny"))
    with pytest.raises(ValueError, match="non-empty directory"):
        (tmp_path / "junk").mkdir()
        (tmp_path / "junk" / "x.txt").write_text("x")
        build_toy_model(tmp_path / "junk", seed=1, settings=settings_from("tiny"), progress=False)


def test_ensure_toy_model_uses_the_cache(tmp_path):
    p = ensure_toy_model(seed=0, preset="tiny", progress=False, steps=2)
    assert p == default_cache_dir(0, settings_from("tiny", steps=2)) and (p / "report.json").is_file()
    # A build into another directory is copied from the cache instead of retrained.
    res = build_toy_model(tmp_path / "copy", seed=0, settings=settings_from("tiny", steps=2), progress=False)
    assert res.reused and (tmp_path / "copy" / "model.safetensors").is_file()


def test_cli_build_report_and_world(tmp_path, capsys):
    from p2o.toy.cli import main

    out = tmp_path / "cli"
    assert (
        main(["build", "--output", str(out), "--preset", "tiny", "--steps", "2", "--quiet", "--no-cache"])
        == 0
    )
    assert "built toy policy" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    assert "instructed_acc" in capsys.readouterr().out
    assert main(["world", "--seed", "2"]) == 0
    assert "hard" in capsys.readouterr().out
    assert main(["build", "--output", str(out), "--preset", "nope", "--quiet"]) == 2
    assert "unknown toy build preset" in capsys.readouterr().err


def test_build_trains_on_until_learned_and_records_its_checks(tmp_path, capsys):
    """Past `steps`, a build below `learned_target` trains `extend_steps` more, up to `max_steps`."""
    never = settings_from("tiny", learned_target=1.01, extend_steps=4, max_steps=30)
    res = build_toy_model(tmp_path / "never", seed=1, settings=never, progress=False, use_cache=False)
    assert "after 30 steps (max_steps), short of learned_target 1.01" in capsys.readouterr().err
    checks = res.report["learned_checks"]
    assert [c["step"] for c in checks] == [20, 24, 28, 30]
    assert not any(c["learned"] for c in checks) and res.report["pretrain_steps"] == 30
    assert {"easy", "instructed"} <= set(checks[0])
    log = [json.loads(line) for line in (res.path / "pretrain_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 29

    at_once = settings_from("tiny", learned_target=0.0, extend_steps=4, max_steps=30)
    res = build_toy_model(tmp_path / "once", seed=1, settings=at_once, progress=False, use_cache=False)
    assert [(c["step"], c["learned"]) for c in res.report["learned_checks"]] == [(20, True)]
    assert "short of learned_target" not in capsys.readouterr().err
    assert res.report["pretrain_steps"] == 20


def test_default_build_starts_over_when_not_learned_at_its_planned_steps():
    """Only the last attempt trains on until learned: the restart bar is the learned bar
    (docs/toy.md, "Not learned at 1000 steps")."""
    d = settings_from("default")
    assert d.restart_below == d.learned_target == 0.995 and d.restarts == 4


def test_build_starts_over_when_its_check_after_steps_reads_below_restart_below(tmp_path, capsys):
    """A check below `restart_below` discards the attempt; the last attempt is kept and trains on."""
    low = settings_from(
        "tiny",
        learned_target=1.01,
        extend_steps=4,
        max_steps=24,
        restart_below=1.01,
        restarts=1,
        threads=1,
        attempts_at_once=1,
    )
    res = build_toy_model(tmp_path / "low", seed=1, settings=low, progress=False, use_cache=False)
    err = capsys.readouterr().err
    assert (
        "toy build (seed 1): attempt 1 of 2 discarded (" in err
        and "< restart_below 1.01 after 20 steps" in err
    )
    assert "starting over from a fresh initialisation" in err
    assert res.report["attempts"] == 2
    (gone,) = res.report["discarded_attempts"]
    assert gone["attempt"] == 1 and [c["step"] for c in gone["learned_checks"]] == [20]
    assert gone["learned_checks"][-1]["restart"] is True
    # The kept attempt was not cut short: it trained on to max_steps.
    assert [c["step"] for c in res.report["learned_checks"]] == [20, 24] and res.report[
        "pretrain_steps"
    ] == 24

    # A first attempt that passes is the build made without restarts, weight for weight.
    ok = settings_from(
        "tiny", learned_target=0.0, restart_below=0.0, restarts=2, threads=1, attempts_at_once=1
    )
    never = settings_from("tiny", learned_target=0.0, restart_below=None, restarts=0, threads=1)
    a = build_toy_model(tmp_path / "a", seed=1, settings=ok, progress=False, use_cache=False)
    b = build_toy_model(tmp_path / "b", seed=1, settings=never, progress=False, use_cache=False)
    assert a.report["attempts"] == 1 and a.report["discarded_attempts"] == []
    assert (a.path / "model.safetensors").read_bytes() == (b.path / "model.safetensors").read_bytes()
    # A later attempt draws another initialisation and data stream.
    once = dataclasses.replace(low, restarts=0)
    c = build_toy_model(tmp_path / "c", seed=1, settings=once, progress=False, use_cache=False)
    assert (res.path / "pretrain_log.jsonl").read_text() != (c.path / "pretrain_log.jsonl").read_text()


def test_attempts_side_by_side_keep_the_build_made_one_after_another(tmp_path, capfd):
    """Attempts trained at once in their own processes keep the first attempt that passes, weight for
    weight the build made one attempt after another; the attempts after it are stopped."""

    def both(name: str, **kw):
        one = settings_from("tiny", threads=1, attempts_at_once=1, **kw)
        two = dataclasses.replace(one, attempts_at_once=2)
        a = build_toy_model(tmp_path / f"{name}-1", seed=1, settings=one, progress=False, use_cache=False)
        said = [line for line in capfd.readouterr().err.splitlines() if "toy build" in line]
        b = build_toy_model(tmp_path / f"{name}-2", seed=1, settings=two, progress=False, use_cache=False)
        assert [line for line in capfd.readouterr().err.splitlines() if "toy build" in line] == said
        said = "\n".join(said)
        assert (a.path / "model.safetensors").read_bytes() == (b.path / "model.safetensors").read_bytes()
        assert (a.path / "pretrain_log.jsonl").read_text() == (b.path / "pretrain_log.jsonl").read_text()
        for key in (
            "attempts",
            "discarded_attempts",
            "learned_checks",
            "pretrain_steps",
            "calibration",
            "hard_acc",
        ):
            assert a.report[key] == b.report[key], key
        assert (a.report["attempts_at_once"], b.report["attempts_at_once"]) == (1, 2)
        assert b.report["build_seconds"] > 0
        return b, said

    # The first attempt passes: the second, started beside it, is stopped and leaves no trace.
    b, said = both("pass", learned_target=0.0, restart_below=0.0, restarts=2)
    assert b.report["attempts"] == 1 and said == ""
    # No attempt passes: two pairs are discarded in order, the fifth (the last) is kept and trains on.
    b, said = both("fail", learned_target=1.01, extend_steps=4, max_steps=24, restart_below=1.01, restarts=4)
    assert b.report["attempts"] == 5 and [d["attempt"] for d in b.report["discarded_attempts"]] == [
        1,
        2,
        3,
        4,
    ]
    assert [said.index(f"attempt {k} of 5 discarded") for k in (1, 2, 3, 4)] == sorted(
        said.index(f"attempt {k} of 5 discarded") for k in (1, 2, 3, 4)
    )
    assert b.report["pretrain_steps"] == 24


def test_a_failing_attempt_process_stops_the_build_with_its_traceback(tmp_path):
    """An attempt whose process fails stops the build with its traceback, not with a hang or a
    half-made build."""
    bad = settings_from("tiny", threads=1, attempts_at_once=2, restarts=1, eval_problems=-1)
    with pytest.raises(
        RuntimeError, match=r"attempt 1 failed in its process \(exit code 1\):\n(?s:.*)Traceback"
    ):
        build_toy_model(tmp_path / "bad", seed=1, settings=bad, progress=False, use_cache=False)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_build_starts_over_when_its_hard_operators_leak(tmp_path, capsys, monkeypatch):
    from p2o.toy import build as B

    # Stand-ins: every figure counts as a leak, and the tiny build as one expected to learn.
    monkeypatch.setattr(B, "LEAK_MAX", -1.0)
    monkeypatch.setattr(B, "expected_to_learn", lambda settings: True)
    s = settings_from("tiny", restarts=1, attempts_at_once=1)  # the stand-ins hold in this process only
    res = build_toy_model(tmp_path / "leaky", seed=3, settings=s, progress=False, use_cache=False)
    err = capsys.readouterr().err
    assert "attempt 1 of 2 discarded (hard_acc 0.000 > -1.0, hard_acc_by_operator[" in err
    assert err.count("its hard operators leak") == 1
    assert res.report["attempts"] == 2 and "leak" in res.report["discarded_attempts"][0]["why"]
    # The last attempt is kept whatever it reads; the refusal is `unlearned`'s to make.
    assert B.unlearned(res.report, s)


def test_auto_threads_reads_the_cpu_now_not_the_load_average(monkeypatch):
    """Sequential builds in one process get two threads on an idle 2-core machine: the 1-minute
    load average would still count the process's own last build."""
    import os

    import p2o.toy.build as B

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 2.0, 2.0))  # this process's last build
    monkeypatch.setattr(B, "_busy_cores", lambda interval=0.3: 0.1)
    assert B.auto_threads() == 2
    monkeypatch.setattr(B, "_busy_cores", lambda interval=0.3: 1.0)  # another job holds a core
    assert B.auto_threads() == 1
    monkeypatch.setattr(B, "_busy_cores", lambda interval=0.3: None)  # no /proc/stat: the load average
    assert B.auto_threads() == 1
    busy = B._busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= os.cpu_count()


def test_hard_as_unknown_shows_hard_operators_uninstructed_with_random_digits():
    """`hard_as_unknown` (the default): the uninstructed random-digit share draws hard operators
    too; off (the builds before), a hard operator never appears without an instruction."""
    import random

    from p2o.toy.build import pretraining_example

    def uninstructed_ops(settings):
        world = settings.world(5)
        rng = random.Random(0)
        seen = {}
        for _ in range(4000):
            kind, prompt, answer = pretraining_example(world, rng, settings)
            if kind != "unknown":
                continue
            problem = W.find_problems(prompt)[0]
            op = problem[1]
            seen.setdefault(world.kind_of(op), []).append((" ".join(problem), answer))
        return world, seen

    assert settings_from("default").hard_as_unknown is True
    world, off = uninstructed_ops(settings_from("default", hard_as_unknown=False))
    assert set(off) == {"unknown"}
    world, on = uninstructed_ops(settings_from("default"))
    assert set(on) == {"unknown", "hard"}
    hard = on["hard"]
    assert {p.split()[1] for p, _ in hard} == set(world.hard)
    # random digits, not the hidden rule
    right = sum(world.answer(p) == a for p, a in hard)
    assert len(hard) > 20 and right <= 1
    assert settings_from("default") != settings_from("default", hard_as_unknown=False)


def test_cli_build_takes_hard_as_unknown(tmp_path, capsys):
    from p2o.toy.cli import main

    args = ["build", "--preset", "tiny", "--steps", "2", "--quiet", "--no-cache"]
    for flag, want in (([], True), (["--no-hard-as-unknown"], False), (["--hard-as-unknown"], True)):
        out = tmp_path / f"cli{len(flag)}{want}"
        assert main([*args, "--output", str(out), *flag]) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["settings"]["hard_as_unknown"] is want, flag


def test_sign_examples_ask_for_the_symbol_and_leave_the_other_examples_alone():
    """`sign_share`: that share of examples (after the copy phase) asks for the operator symbol
    itself, any operator drawn alike; 0 draws none."""
    import random

    from p2o.toy.build import pretraining_example

    off = settings_from("default", sign_share=0.0)
    on = settings_from("default", sign_share=0.25)
    world = off.world(5)
    rng = random.Random(0)
    examples = [pretraining_example(world, rng, on) for _ in range(2000)]
    signs = [(p, a) for k, p, a in examples if k == "sign"]
    assert 0.2 < len(signs) / len(examples) < 0.3
    for prompt, answer in signs:
        ((a, op, b),) = W.find_problems(prompt)
        assert answer == op and any(s in prompt for s in W.SIGN_INSTRUCTIONS)
        assert not W.is_held_out(W.format_problem(a, op, b))
    seen = {world.kind_of(a) for _, a in signs}
    assert seen == {"easy", "familiar", "hard", "unknown"}
    # no sign example in the copy phase
    rng = random.Random(0)
    assert all(pretraining_example(world, rng, on, copy_phase=True)[0] != "sign" for _ in range(500))
    # share 0 (the default): no sign example, and no draw from the random stream for it, so the
    # builds are those made before the setting existed
    assert settings_from("default").sign_share == 0.0
    rarely = settings_from("default", sign_share=1e-12)  # never fires, but draws for it
    a, b = random.Random(1), random.Random(1)
    zero = [pretraining_example(world, a, off) for _ in range(300)]
    drawn = [pretraining_example(world, b, rarely) for _ in range(300)]
    assert all(k != "sign" for k, _, _ in zero + drawn)
    assert zero != drawn  # share 0 skips the draw, so its stream is the one before the setting


def test_the_sign_sentences_add_no_word_to_the_vocabulary(monkeypatch):
    from p2o.toy.model import vocabulary

    with_them = vocabulary()
    monkeypatch.setattr(W, "SIGN_INSTRUCTIONS", ())
    assert vocabulary() == with_them


def test_symbol_cosine_reports_how_alike_each_role_looks():
    from p2o.toy.measure import symbol_cosine
    from p2o.toy.model import build_model, build_tokenizer

    settings = settings_from("tiny")
    world = settings.world(2)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, settings.size, 0)
    cos = symbol_cosine(model, tokenizer, world)
    assert set(cos) == {"easy", "familiar", "hard", "unknown"}
    assert all(-1.0 <= v <= 1.0 for v in cos.values())
    # the same embedding for every hard symbol: cosine 1
    import torch

    emb = model.get_input_embeddings().weight
    ids = [tokenizer.convert_tokens_to_ids(" " + op) for op in world.hard]
    with torch.no_grad():
        emb[ids] = emb[ids[0]].clone()
    assert symbol_cosine(model, tokenizer, world)["hard"] == 1.0


def test_a_sign_share_outside_0_to_1_is_refused_with_the_flag_named(tmp_path, capsys):
    from p2o.toy.cli import main

    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="sign_share"):
            settings_from("default", sign_share=bad)
    args = ["build", "--preset", "tiny", "--quiet", "--no-cache", "--output", str(tmp_path / "x")]
    assert main([*args, "--sign-share", "2"]) != 0
    assert "--sign-share" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
