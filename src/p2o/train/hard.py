"""Hard-sample mining: per-sample-id statistics of scored groups.

A prompt is *hard* when at most `hard_max_successes` (τ) of its K rollouts succeeded. A sample keeps
its latest group's verdict, so one that stays hard while templated is mined again at the next phase,
and one that got solved drops out. The tracker is fed the *gathered* groups on every rank, so all
ranks hold identical stats.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SampleStats:
    seen_groups: int = 0  # groups scored since the run started
    hard_groups: int = 0
    last_successes: int = 0
    last_k: int = 0
    last_templated: bool = False
    last_step: int = -1
    total_successes: int = 0
    total_rollouts: int = 0


@dataclass
class HardSampleTracker:
    hard_max_successes: int = 1
    stats: dict[str, SampleStats] = field(default_factory=dict)

    def update(self, sample_id: str, successes: int, k: int, templated: bool, step: int) -> bool:
        """Record one scored group; returns whether it was hard."""
        s = self.stats.setdefault(sample_id, SampleStats())
        hard = successes <= self.hard_max_successes
        s.seen_groups += 1
        s.hard_groups += int(hard)
        s.last_successes, s.last_k, s.last_templated, s.last_step = successes, k, templated, step
        s.total_successes += successes
        s.total_rollouts += k
        return hard

    def update_groups(self, rows: list[tuple[str, float, bool]], k: int, step: int) -> dict[str, int]:
        """Feed gathered rollouts `(sample_id, reward, templated)`, K consecutive rows per group.

        Returns counts for logging: groups, hard groups, templated groups, rescued groups (templated
        groups that were no longer hard).
        """
        counts = {"groups": 0, "hard": 0, "templated": 0, "rescued": 0}
        for start in range(0, len(rows) - k + 1, k):
            group = rows[start : start + k]
            sid = group[0][0]
            successes = sum(1 for _, r, _ in group if r >= 1.0)
            templated = any(t for _, _, t in group)
            hard = self.update(sid, successes, k, templated, step)
            counts["groups"] += 1
            counts["hard"] += int(hard)
            counts["templated"] += int(templated)
            counts["rescued"] += int(templated and not hard)
        return counts

    def hard_ids(self) -> list[str]:
        """Samples whose latest group was hard, in a stable order."""
        return sorted(sid for sid, s in self.stats.items() if s.last_successes <= self.hard_max_successes)

    def to_json(self) -> dict[str, Any]:
        return {
            "hard_max_successes": self.hard_max_successes,
            "stats": {sid: asdict(s) for sid, s in self.stats.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HardSampleTracker:
        t = cls(hard_max_successes=int(data.get("hard_max_successes", 1)))
        t.stats = {sid: SampleStats(**s) for sid, s in data.get("stats", {}).items()}
        return t
