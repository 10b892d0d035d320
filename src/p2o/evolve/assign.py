"""Template assignment from the candidate × dev-sample score matrix (docs/design.md, step 5).

1. A template *solves* a dev sample when its score there is above `solved_threshold` (default 0: at
   least one of its rollouts succeeded — enough for the group to carry a learning signal).
2. Greedy set cover over the dev samples the templates solve → the cover set Z.
3. Every hard sample gets K templates drawn with replacement, weighted by each template's mean dev
   score, from the templates of Z that solved it; a sample no template of Z solved (a train-side hard
   sample, or an unsolved dev sample) draws from all of Z. With `solved_on` (scores of the cover
   templates on the train-side samples too: `assign_score_all`), train-side samples also draw from the
   templates that solved them.

Never GEPA's Pareto tie sets: they include templates tied at 0. The draw for a sample depends only
on `seed` and its id, so adding or reordering samples does not change anyone else's templates.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence

ScoreMatrix = Mapping[str, Mapping[str, float]]  # template id -> {dev sample id -> score}


def solved_sets(score_matrix: ScoreMatrix, solved_threshold: float = 0.0) -> dict[str, set[str]]:
    """Template id → the dev samples it solves."""
    return {t: {s for s, v in row.items() if v > solved_threshold} for t, row in score_matrix.items()}


def mean_scores(score_matrix: ScoreMatrix) -> dict[str, float]:
    return {t: (sum(row.values()) / len(row) if row else 0.0) for t, row in score_matrix.items()}


def greedy_set_cover(
    score_matrix: ScoreMatrix,
    *,
    solved_threshold: float = 0.0,
    exclude: Collection[str] = (),
) -> list[str]:
    """Templates, in pick order, that together solve every dev sample any template solves.

    Each step picks the template solving the most not-yet-covered samples; ties go to the higher mean
    dev score, then to the earlier template in the matrix. `exclude` removes templates from
    consideration (the empty seed template, which is no template at all).
    """
    solved = {t: s for t, s in solved_sets(score_matrix, solved_threshold).items() if t not in exclude}
    means = mean_scores(score_matrix)
    order = {t: i for i, t in enumerate(score_matrix)}
    uncovered = set().union(*solved.values()) if solved else set()
    cover: list[str] = []
    while uncovered:
        best = max(solved, key=lambda t: (len(solved[t] & uncovered), means[t], -order[t]))
        gain = solved[best] & uncovered
        if not gain:
            break
        cover.append(best)
        uncovered -= gain
    return cover


def assign_templates(
    score_matrix: ScoreMatrix,
    sample_ids: Sequence[str],
    k: int,
    *,
    seed: int = 0,
    solved_threshold: float = 0.0,
    exclude: Collection[str] = (),
    cover: Sequence[str] | None = None,
    solved_on: ScoreMatrix | None = None,
    skip_unsolved: bool = False,
) -> dict[str, list[str]]:
    """K template ids per hard sample (sample id → list of K ids), drawn as the module docstring says.

    `sample_ids` are all hard samples to assign (dev and train). With an empty cover set (no template
    solved any dev sample) nothing can be assigned and the result is `{}`. `solved_on`: more scores
    (template id → {sample id → score}) that count, next to the dev scores, for which templates solved
    a sample; the cover and the weights stay those of the dev matrix. `skip_unsolved`: a sample no
    cover template solved gets no templates (it stays untemplated, so it stays hard and is mined
    again) instead of drawing from the whole cover.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1 (got {k})")
    if cover is None:
        cover = greedy_set_cover(score_matrix, solved_threshold=solved_threshold, exclude=exclude)
    if not cover:
        return {}
    means = mean_scores(score_matrix)
    solved = solved_sets(score_matrix, solved_threshold)
    for t, more in solved_sets(solved_on or {}, solved_threshold).items():
        solved[t] = solved.get(t, set()) | more
    out: dict[str, list[str]] = {}
    for sid in sample_ids:
        pool = [t for t in cover if sid in solved.get(t, ())]
        if not pool:
            if skip_unsolved:
                continue
            pool = list(cover)
        weights = [max(means.get(t, 0.0), 1e-12) for t in pool]
        rng = random.Random(f"{seed}|{sid}")
        out[sid] = rng.choices(pool, weights=weights, k=k)
    return out
