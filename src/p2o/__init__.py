"""p2o: P²O — joint policy and prompt optimization for RL with verifiable rewards.

GRPO whose hard samples (every rollout fails, so the group advantage is zero) are rescued by
reasoning-prompt templates evolved with GEPA against the live policy, then distilled back into
the weights: rollouts are generated from the templated prompt but the loss is computed on the
original prompt.
"""

__version__ = "0.1.0"
