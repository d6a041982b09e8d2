"""Who an Assign User step picks: smooth weighted round robin over the users who may take work.

Smooth weighted round robin (the nginx upstream algorithm): every pick adds each eligible user's
weight to their running score, picks the highest score (ties: the earlier user in the step's
list) and subtracts the eligible users' total weight from the winner. Over any run of picks with
the same eligible users, each user's count differs from ``picks * weight / total`` by less than
one, and every full cycle of ``total`` picks is exact: 5:2:1 gives 5, 2 and 1 of every 8.
The scores are the whole state; the caller keeps them in one row per step, locked while picking,
so concurrent enrollments see each other's picks and the proportions stay exact.

Users who may not take work (deleted, away or out of office now, or outside working hours when
the step asks for it) are left out of that pick and their scores do not move, so they neither
pile up credit while away nor get punished for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, MutableMapping, Sequence


def smooth_weighted_pick(
    scores: MutableMapping[str, int], candidates: Sequence[tuple[uuid.UUID, int]]
) -> uuid.UUID | None:
    """Pick one of ``candidates`` (user id, weight > 0), updating ``scores`` (user id text ->
    running score) in place. None when there is no candidate (``scores`` unchanged)."""
    if not candidates:
        return None
    total = 0
    best: uuid.UUID | None = None
    best_score = 0
    for user_id, weight in candidates:
        key = str(user_id)
        score = scores.get(key, 0) + weight
        scores[key] = score
        total += weight
        if best is None or score > best_score:
            best, best_score = user_id, score
    assert best is not None
    scores[str(best)] -= total
    return best


def expected_share(weights: Mapping[uuid.UUID, int], picks: int) -> dict[uuid.UUID, float]:
    """What each user should get out of ``picks`` with these weights (for tests and reports)."""
    total = sum(weights.values())
    return {user_id: picks * weight / total for user_id, weight in weights.items()}
