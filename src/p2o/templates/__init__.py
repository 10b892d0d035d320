"""Templates: the one renderer T(x, z) and template programs."""

from p2o.templates.render import render_augmented, strip_template

__all__ = ["render_augmented", "strip_template"]
