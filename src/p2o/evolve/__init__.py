"""The prompt-evolution phase: GEPA against the live policy, proposal validation, template assignment.

Public API:

- `run_phase(config, task, hard_samples, policy, output_dir, reflection_lm=None, progress=True)`
  → `PhaseResult(templates, assignments, stats)`; writes templates.json, assignments.json, phase.json.
- `assign_templates(score_matrix, sample_ids, k, seed=...)` and `greedy_set_cover(score_matrix)`.
- `split_hard_samples`, `mine_hard_samples`, `validate_proposal`, `make_reflector`.
"""

from p2o.evolve.assign import assign_templates, greedy_set_cover, solved_sets
from p2o.evolve.mining import mine_hard_samples
from p2o.evolve.phase import PhaseError, PhaseResult, run_phase, split_hard_samples
from p2o.evolve.proposals import REJECTION_REASONS, contains_answer, validate_proposal
from p2o.evolve.reflection import (
    ReflectionError,
    ReflectionReply,
    Reflector,
    as_reflector,
    make_reflector,
    reflector_from_config,
)

__all__ = [
    "REJECTION_REASONS",
    "PhaseError",
    "PhaseResult",
    "ReflectionError",
    "ReflectionReply",
    "Reflector",
    "as_reflector",
    "assign_templates",
    "contains_answer",
    "greedy_set_cover",
    "make_reflector",
    "mine_hard_samples",
    "reflector_from_config",
    "run_phase",
    "solved_sets",
    "split_hard_samples",
    "validate_proposal",
]
