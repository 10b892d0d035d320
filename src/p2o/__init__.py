"""p2o: P²O — joint policy and prompt optimization for RL with verifiable rewards.

GRPO whose hard samples (every rollout fails, so the group advantage is zero) are rescued by
reasoning-prompt templates evolved with GEPA against the live policy, then distilled back into
the weights: rollouts are generated from the templated prompt but the loss is computed on the
original prompt.
"""

__version__ = "0.1.0"

import os as _os

# LiteLLM (under dspy.LM, the policy client and Teacher-Ref) fetches its price table from GitHub at
# import, retrying for seconds where there is no network; the copy it ships is used instead. A
# user who wants the live table sets LITELLM_LOCAL_MODEL_COST_MAP=False.
_os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
