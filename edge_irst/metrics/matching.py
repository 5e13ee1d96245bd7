"""One-to-one matching of ground-truth targets to predicted components (one image, one distance threshold).

- "greedy": STD-EvalKit / DNANet first-match: each ground-truth target, in label order, takes the FIRST untaken
  prediction in label order whose pair is allowed (not the nearest). Results depend on component order.
- "hungarian": optimal: the most matched pairs, and among those the least total centroid distance.

The assignment solver is written here (shortest augmenting paths with potentials, O(n^2 m) for an n x m problem,
vectorised over columns) so the metrics need only numpy; it runs only on the rows and columns of an image that
compete for the same partner, which on real data is rarely more than a handful.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnknownNameError
from .conventions import MATCHING_RULES

_EMPTY = np.zeros(0, dtype=np.int64)


def match(cost: np.ndarray, allowed: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Matched pairs as (gt_indices, pred_indices), int64 arrays of equal length, sorted by gt index.

    cost: float (n_gt, n_pred), e.g. centroid distances; allowed: bool (n_gt, n_pred), pairs that may match.
    """
    if rule not in MATCHING_RULES:
        raise UnknownNameError("matching rule", rule, MATCHING_RULES)
    if not allowed.any():
        return _EMPTY, _EMPTY
    if allowed.sum(axis=0).max() <= 1 and allowed.sum(axis=1).max() <= 1:
        rows, cols = np.nonzero(allowed)  # no competition: every rule matches every allowed pair
        return rows.astype(np.int64), cols.astype(np.int64)
    if rule == "greedy":
        return _greedy(allowed)
    return _optimal(cost, allowed)


def match_below(distance: np.ndarray, thresholds: np.ndarray, rule: str, gate=True) -> list:
    """`match(distance, (distance < d) & gate, rule)` for every d of the ascending `thresholds`, as a list.

    The allowed sets grow with d; when the largest has no competing pairs, neither has any smaller one, and every
    rule matches exactly the allowed pairs: one test replaces a matching per threshold (the common case).
    """
    widest = (distance < thresholds[-1]) & gate
    if widest.sum(axis=0).max(initial=0) <= 1 and widest.sum(axis=1).max(initial=0) <= 1:
        rows, cols = np.nonzero(widest)
        rows, cols = rows.astype(np.int64), cols.astype(np.int64)
        pair_distance = distance[rows, cols]
        return [(rows[pair_distance < d], cols[pair_distance < d]) for d in thresholds]
    return [match(distance, (distance < d) & gate, rule) for d in thresholds]


def _greedy(allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    free = np.ones(allowed.shape[1], dtype=bool)
    rows, cols = [], []
    for i in range(allowed.shape[0]):
        candidates = np.flatnonzero(allowed[i] & free)
        if candidates.size:
            free[candidates[0]] = False
            rows.append(i)
            cols.append(int(candidates[0]))
    return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)


def _optimal(cost: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.flatnonzero(allowed.any(axis=1))
    cols = np.flatnonzero(allowed.any(axis=0))
    sub_allowed = allowed[np.ix_(rows, cols)]
    sub_cost = np.where(sub_allowed, cost[np.ix_(rows, cols)], 0.0)
    # A forbidden pair costs more than any full set of allowed pairs, so fewer forbidden pairs always wins:
    # the solution has the most allowed pairs, then the least allowed cost.
    forbidden = 1.0 + min(sub_cost.shape) * (float(sub_cost.max()) + 1.0)
    sub_cost = np.where(sub_allowed, sub_cost, forbidden)
    transposed = sub_cost.shape[0] > sub_cost.shape[1]
    assignment = min_cost_assignment(sub_cost.T if transposed else sub_cost)
    r = np.arange(assignment.size)
    r, c = (assignment, r) if transposed else (r, assignment)
    keep = sub_allowed[r, c]
    order = np.argsort(r[keep], kind="stable")
    return rows[r[keep][order]].astype(np.int64), cols[c[keep][order]].astype(np.int64)


def min_cost_assignment(cost: np.ndarray) -> np.ndarray:
    """Column assigned to each row minimising the total cost; cost is float (n, m) with n <= m, all finite.

    Returns int64 (n,). Shortest augmenting paths with row/column potentials (the Hungarian method in the
    Jonker-Volgenant form): each row is added by a Dijkstra-like search over reduced costs.
    """
    n, m = cost.shape
    if n > m:
        raise ValueError(f"min_cost_assignment needs rows <= columns, got {cost.shape}")
    row_pot = np.zeros(n + 1)
    col_pot = np.zeros(m + 1)
    owner = np.zeros(m + 1, dtype=np.int64)  # owner[j]: 1-based row holding column j (0: free); j=0 is a sentinel
    via = np.zeros(m + 1, dtype=np.int64)  # previous column on the shortest path to j
    for row in range(1, n + 1):
        owner[0] = row
        col = 0
        best = np.full(m + 1, np.inf)
        visited = np.zeros(m + 1, dtype=bool)
        while True:
            visited[col] = True
            r = owner[col]
            reduced = cost[r - 1] - row_pot[r] - col_pot[1:]
            open_cols = ~visited[1:]
            better = open_cols & (reduced < best[1:])
            best[1:][better] = reduced[better]
            via[1:][better] = col
            candidates = np.where(open_cols, best[1:], np.inf)
            nxt = int(np.argmin(candidates)) + 1
            delta = candidates[nxt - 1]
            row_pot[owner[visited]] += delta
            col_pot[visited] -= delta
            best[1:][open_cols] -= delta
            col = nxt
            if owner[col] == 0:
                break
        while col:  # augment along the path back to the sentinel
            prev = via[col]
            owner[col] = owner[prev]
            col = prev
    assignment = np.zeros(n, dtype=np.int64)
    held = np.flatnonzero(owner[1:])
    assignment[owner[1:][held] - 1] = held
    return assignment
