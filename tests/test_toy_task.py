"""The toy task's default model: the cached build of its own world."""

import p2o.toy.build as B
from p2o.tasks import get_task


def test_toy_task_default_model_is_the_cached_build_of_its_world(monkeypatch):
    # Records the call instead of building (a default build takes minutes; builds are tested in
    # test_toy_model.py).
    calls = []
    monkeypatch.setattr(B, "ensure_toy_model", lambda **kw: calls.append(kw) or "/cache/toy")
    assert get_task("toy", seed=3).default_model() == "/cache/toy"
    assert get_task("toy", seed=1, n_unknown=10).default_model() == "/cache/toy"
    assert calls == [{"seed": 3}, {"seed": 1, "n_unknown": 10}]


def test_a_default_build_that_did_not_learn_its_world_is_refused(tmp_path):
    from pathlib import Path

    import pytest

    default, tiny = B.settings_from("default"), B.settings_from("tiny")
    good = {"instructed_acc": 0.99, "easy_acc": 1.0}
    bad = {"instructed_acc": 0.545, "easy_acc": 0.95}
    assert B.unlearned(good, default) == []
    assert B.unlearned(bad, default) == ["instructed_acc 0.545 < 0.9"]
    assert B.unlearned(bad, tiny) == []  # reduced builds are not expected to learn
    leaky = {"instructed_acc": 0.99, "easy_acc": 1.0, "hard_acc": 0.0375}
    assert B.unlearned(leaky, default) == [
        "hard_acc 0.037 > 0.01: its hard operators leak, and plain GRPO could learn them"
    ]
    assert B.unlearned({**leaky, "hard_acc": 0.01}, default) == []
    # One leaking operator is refused even where the average over the hard operators is clean.
    one = {**good, "hard_acc": 0.0, "hard_acc_by_operator": {"⊕ add": 0.0017, "⊗ absdiff": 0.015}}
    assert B.unlearned(one, default) == [
        "hard_acc_by_operator['⊗ absdiff'] 0.015 > 0.01: its hard operators leak, and plain GRPO could learn them"
    ]
    assert B.unlearned({**one, "hard_acc_by_operator": {"⊗ absdiff": 0.01}}, default) == []
    B.check_learned(B.BuildResult(Path("x"), good, False), 0, default)
    with pytest.raises(
        B.ToyBuildError,
        match=r"seed 3 .*instructed_acc 0.545 < 0.9.*converges more slowly.*after 1000 steps.*--restarts 6 "
        r"--max_steps 3000",
    ):
        B.check_learned(B.BuildResult(Path("x"), bad, True), 3, default)
    # Two leaks are said in one line, and the message says what decides a leak.
    two = {**one, "hard_acc": 0.02, "attempts": 3}
    (said,) = B.unlearned(two, default)
    assert said == (
        "hard_acc 0.020 > 0.01, hard_acc_by_operator['⊗ absdiff'] 0.015 > 0.01: its hard operators leak, "
        "and plain GRPO could learn them"
    )
    with pytest.raises(
        B.ToyBuildError, match=r"decided by its initialisation.*after 3 attempts, the last 1000"
    ):
        B.check_learned(B.BuildResult(Path("x"), two, True), 3, default)


def test_build_fingerprint_ignores_comments_docstrings_and_formatting():
    a = '"""Module."""\n\ndef f(x):\n    """Doc."""\n    return x + 1  # one\n'
    b = "def f(x):\n    # another comment\n    return (x +\n            1)\n"
    assert B.code_of(a) == B.code_of(b)
    assert B.code_of(a) != B.code_of(a.replace("x + 1", "x + 2"))
    assert B.code_of('def f():\n    """Only a docstring."""\n') == B.code_of("def f():\n    pass\n")
