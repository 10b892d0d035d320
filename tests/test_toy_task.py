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
