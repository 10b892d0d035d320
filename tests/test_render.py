"""The one renderer T(x, z)."""

import pytest

from p2o.templates import render_augmented

X = [{"role": "system", "content": "sys"}, {"role": "user", "content": "What is 2+2?"}]


def test_template_then_blank_line_then_problem():
    out = render_augmented(X, "Think about carries.")
    assert out[1]["content"] == "Think about carries.\n\nWhat is 2+2?"
    assert out[0] == X[0]
    assert X[1]["content"] == "What is 2+2?"  # input untouched


def test_empty_template_is_identity():
    assert render_augmented(X, "") == X and render_augmented(X, "  \n") == X
    with pytest.raises(ValueError, match="no user message"):
        render_augmented([{"role": "system", "content": "s"}], "Z")
